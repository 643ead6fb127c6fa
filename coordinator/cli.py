"""``gpuwarden``: the operator's command. ``gpuwarden coordinator`` runs the daemon; the other
subcommands read the running coordinator's API or work on files."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console

from coordinator import client, views
from coordinator.tables import Table, show

if TYPE_CHECKING:
    from coordinator.governance.policy import Policy

USAGE = """usage: gpuwarden <command> [options]

commands:
  coordinator        run the coordinator daemon (gpuwarden coordinator --help)
  status             cluster capacity summary, from the coordinator's API
  nodes [NAME]       node table; with NAME, one node's story (findings, history, marks)
  teams              team quotas, borrowing and lending, from the coordinator's API
  tasks              tasks with their state, team, class and times, from the API
  policy check FILE  validate a governance policy file without running anything
  policy export --slurm FILE
                     the policy as sacctmgr commands for a Slurm cluster
  checkpoint         record a training checkpoint on this pod (run inside a task's pod)
  demo               run the whole system on this machine with a simulated fleet
"""


def _api_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--api", default=os.environ.get("GPUWARDEN_API", "http://127.0.0.1:8080"),
                   help="the coordinator's HTTP address (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return p


# A loader asks the API and returns its JSON (what --json prints) and the tables of it.
Loader = Callable[[str, str | None], tuple[Any, list[Table]]]


def _read(prog: str, argv: Sequence[str], load: Loader, *, takes_name: bool = False) -> int:
    parser = _api_parser(f"gpuwarden {prog}")
    if takes_name:
        parser.add_argument("name", nargs="?", metavar="NAME",
                            help="one node: its findings, history and marks")  # fmt: skip
    args = parser.parse_args(list(argv))
    try:
        data, view = load(args.api, getattr(args, "name", None))
    except client.NotFound as exc:
        print(f"gpuwarden {prog}: {exc}; `gpuwarden {prog}` lists what the coordinator knows",
              file=sys.stderr)  # fmt: skip
        return 1
    except client.ApiUnreachable as exc:
        print(f"gpuwarden {prog}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    # a terminal gets tables that fit it; a pipe gets every column, tab-separated
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    lines = show(view, width)
    if width is None:
        for line in lines:
            print(line.plain)
    else:
        console = Console(highlight=False)
        for line in lines:
            console.print(line, soft_wrap=True)
    return 0


def _status(api: str, _: str | None) -> tuple[Any, list[Table]]:
    cluster = client.fetch(api, "/api/v1/cluster")
    return cluster, views.status_view(cluster)


def _nodes(api: str, name: str | None) -> tuple[Any, list[Table]]:
    if name is None:
        nodes = client.fetch(api, "/api/v1/nodes")
        return nodes, views.nodes_view(nodes["nodes"], time.time())
    quoted = urllib.parse.quote(name, safe="")
    node = client.fetch(api, f"/api/v1/nodes/{quoted}")
    try:
        marks = client.fetch(api, f"/api/v1/nodes/{quoted}/marks")
    except client.ApiUnreachable as exc:  # the story reads without them
        marks = {"actuator": "?", "error": str(exc)}
    return {**node, "marks": marks}, views.node_story_view(node, marks, time.time())


def _teams(api: str, _: str | None) -> tuple[Any, list[Table]]:
    teams = client.fetch(api, "/api/v1/teams")
    return teams, views.teams_view(teams["teams"], teams.get("unassigned"))


def _tasks(api: str, _: str | None) -> tuple[Any, list[Table]]:
    tasks = client.fetch(api, "/api/v1/tasks")
    return tasks, views.tasks_view(tasks["tasks"])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "coordinator":
        from coordinator.__main__ import main as run_coordinator  # noqa: PLC0415

        return run_coordinator(rest, prog="gpuwarden coordinator")
    readers: dict[str, Loader] = {
        "status": _status, "nodes": _nodes, "teams": _teams, "tasks": _tasks,
    }  # fmt: skip
    if command in readers:
        return _read(command, rest, readers[command], takes_name=command == "nodes")
    if command == "demo":
        from coordinator.demo import main as demo  # noqa: PLC0415

        return demo(rest)
    if command == "policy":
        return policy_command(rest)
    if command == "checkpoint":
        from coordinator.checkpoint import main as checkpoint  # noqa: PLC0415

        return checkpoint(rest, prog="gpuwarden checkpoint")
    print(f"gpuwarden: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


def policy_command(argv: Sequence[str], prog: str = "gpuwarden policy") -> int:
    """``gpuwarden policy check FILE...``: validate policy files without running anything.
    Exit 0 when every file is valid, 1 when any is refused (each problem printed as
    ``FILE: field: reason``), 2 on a usage error. ``gpuwarden policy export --slurm FILE``:
    print the policy as ``sacctmgr`` commands (1 when the file is refused)."""
    parser = argparse.ArgumentParser(prog=prog, description="work on governance policy files")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="validate policy files (fields, ranges, references), print a summary",
        description="Validate governance policy files the way the coordinator loads them.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    export = commands.add_parser(
        "export",
        help="print the policy in a scheduler's own terms",
        description="Print the policy as commands for another scheduler, and what it cannot "
        "express. --slurm: sacctmgr commands (an account per team, a QOS per priority class).",
    )
    export.add_argument("--slurm", action="store_true", required=True,
                        help="sacctmgr commands for Slurm's accounting (slurmdbd)")
    export.add_argument("file", metavar="FILE")
    args = parser.parse_args(list(argv))
    # imported here: pydantic and the models take a moment, which other commands need not pay
    from coordinator.governance.policy import PolicyError, load_policy  # noqa: PLC0415

    if args.command == "export":
        return _export_slurm(args.file)
    refused = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            refused += 1
            for problem in exc.problems:
                print(f"{exc.source}: {problem}", file=sys.stderr)
            continue
        print(f"{path}: ok: {_policy_summary(policy)}")
    return 1 if refused else 0


def _export_slurm(path: str) -> int:
    from coordinator.backends.slurm.policy_export import export_policy  # noqa: PLC0415
    from coordinator.governance.policy import PolicyError, load_policy  # noqa: PLC0415

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        print(f"gpuwarden policy export: fix {path} first ('gpuwarden policy check {path}' "
              "lists every problem)", file=sys.stderr)  # fmt: skip
        return 1
    print(export_policy(policy).script(path), end="")
    return 0


def _policy_summary(policy: Policy) -> str:
    teams = len(policy.teams)
    classes = len(policy.priority_classes)
    return (
        f"{teams} team{'s' * (teams != 1)} guaranteed {policy.total_quota()} GPUs, "
        f"{classes} priority class{'es' * (classes != 1)}, admission {policy.admission}, "
        f"idle compute {policy.idle_compute}"
    )


if __name__ == "__main__":
    sys.exit(main())
