"""``gpuwarden``: the operator's command. ``gpuwarden coordinator`` runs the daemon; the other
subcommands read the running coordinator's API or work on files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from coordinator import client

USAGE = """usage: gpuwarden <command> [options]

commands:
  coordinator        run the coordinator daemon (gpuwarden coordinator --help)
  status             cluster capacity summary, from the coordinator's API
  nodes              node table, from the coordinator's API
  teams              team quotas and usage, from the coordinator's API
  tasks              tasks per priority class, from the coordinator's API
  policy check FILE  validate a governance policy file without running anything
  checkpoint         record a training checkpoint on this pod (run inside a task's pod)
  demo               run the whole system on this machine with a simulated fleet
"""


def _api_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--api", default=os.environ.get("GPUWARDEN_API", "http://127.0.0.1:8080"),
                   help="the coordinator's HTTP address (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    return p


def _read(prog: str, argv: Sequence[str], path: str,
          render: Callable[[Console, Any], None]) -> int:
    args = _api_parser(f"gpuwarden {prog}").parse_args(list(argv))
    try:
        data = client.fetch(args.api, path)
    except client.ApiUnreachable as exc:
        print(f"gpuwarden {prog}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        render(Console(), data)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "coordinator":
        from coordinator.__main__ import main as run_coordinator  # noqa: PLC0415

        return run_coordinator(rest, prog="gpuwarden coordinator")
    if command == "status":
        return _read(command, rest, "/api/v1/cluster", client.render_status)
    if command == "nodes":
        return _read(command, rest, "/api/v1/nodes",
                     lambda c, d: client.render_nodes(c, d["nodes"]))
    if command == "teams":
        return _read(command, rest, "/api/v1/teams",
                     lambda c, d: client.render_rows(c, "teams", d["teams"]))
    if command == "tasks":
        return _read(command, rest, "/api/v1/tasks",
                     lambda c, d: client.render_rows(c, "tasks", d["tasks"]))
    if command == "demo":
        from coordinator.demo import main as demo  # noqa: PLC0415

        return demo(rest)
    if command in {"policy", "checkpoint"}:
        handler = _EXTRA.get(command)
        if handler is not None:
            return handler(rest)
    print(f"gpuwarden: unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


# commands that live with their feature (governance, demo) register here
_EXTRA: dict[str, Callable[[list[str]], int]] = {}


if __name__ == "__main__":
    sys.exit(main())
