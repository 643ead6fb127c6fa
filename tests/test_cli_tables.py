"""What a person sees from ``gpuwarden status|nodes|teams|tasks``: on terminals 80, 100 and 200
columns wide, and piped. The API is canned; the command and its tables are real."""

from __future__ import annotations

import io
import json
import re
import sys
from typing import Any

import pytest

from coordinator import cli, client

NOW = 1_767_276_120.0  # 2026-01-01 14:02:00 UTC
LONG_TASK = "research/llama-70b-finetune-long-context-with-a-very-descriptive-name-v2"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _task(name: str, state: str, **extra: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "task": name, "team": name.partition("/")[0], "priority_class": "training", "gpus": 16,
        "size": 2, "state": state, "queued_at": 100.0, "admitted_at": 4497.6,
        "started_at": 4497.6, "last_checkpoint": None, "requeues": 1, "times_preempted": 0,
        "preempted_by": None, "nodes": {"gpu-node-001": 8, "gpu-node-002": 8},
        "reason": "admitted within the team's guarantee", "waited_s": 4397.6,
        "running_s": 93784.0,
    }  # fmt: skip
    task.update(extra)
    return task


TASKS = {"tasks": [
    _task(LONG_TASK, "running"),
    _task("inference/chat-serving-blue", "pending", admitted_at=None, started_at=None,
          nodes={}, running_s=None, waited_s=62.0,
          reason="waiting: the team's guarantee is in use and no lender has idle GPUs"),
    _task("vision/resnet-sweep-17", "requeued", requeues=3, waited_s=0.4, running_s=None),
]}  # fmt: skip

NODES = {"nodes": [
    {"name": "gpu-node-001", "lifecycle": "healthy", "since": NOW - 3600, "health": "healthy",
     "action": "none", "reason": "", "schedulable": True, "gpus_total": 8, "gpus_healthy": 8,
     "instance_type": "p5.48xlarge", "agent": "online", "last_seen": NOW - 2, "boot_id": "b1",
     "hold": False},
    {"name": "gpu-node-009-in-the-east-rack-with-a-long-name", "lifecycle": "pending-reboot",
     "since": NOW - 190, "health": "unhealthy", "action": "reboot",
     "reason": "XID 79 on GPU 2 at 14:02 UTC and 1 other fault", "schedulable": False,
     "gpus_total": 8, "gpus_healthy": 0, "instance_type": "p5.48xlarge", "agent": "online",
     "last_seen": NOW - 1, "boot_id": "b2", "hold": False},
]}  # fmt: skip

TEAMS = {
    "teams": [
        {"name": "research", "namespace": "research", "quota": 16, "guarantee": 16,
         "allocated": 22, "in_use": 22, "borrowed": 6, "lent": 0, "pending_tasks": 3,
         "utilization_pct": None},
        {"name": "inference", "namespace": "serving", "quota": 8, "guarantee": 8,
         "allocated": 6, "in_use": 6, "borrowed": 0, "lent": 2, "pending_tasks": 0,
         "utilization_pct": 71.25},
    ],
    "unassigned": {"gpus": 8, "used": 4, "idle": 4},
}  # fmt: skip

STORY = {
    **NODES["nodes"][1], "driver_version": "550.90.07", "last_event": None, "gpus": [],
    "findings": [
        {"check": "xid", "severity": "critical", "code": "XID-79", "gpu_index": 2,
         "message": "XID 79: GPU has fallen off the bus", "action": "reboot",
         "unknown": False, "first_seen": NOW - 190, "count": 2},
        {"check": "host", "severity": "warning", "code": "DISK-FULL", "gpu_index": None,
         "message": "/ is 97% full", "action": "none", "unknown": False,
         "first_seen": NOW - 7200, "count": 1},
    ],
    "history": [
        {"ts": NOW - 190, "event": "healthy -> pending-reboot", "actor": "coordinator-0",
         "reason": "fault-needs-reboot: XID 79 on GPU 2 at 13:58 UTC", "dry_run": False},
    ],
}  # fmt: skip
MARKS = {"actuator": "kubernetes", "exists": True, "ready": True,
         "label": "UnschedulablePendingReboot", "expected_label": "UnschedulablePendingReboot",
         "cordoned": True, "cordoned_by_gpuwarden": True}  # fmt: skip

API = {
    "/api/v1/tasks": TASKS, "/api/v1/nodes": NODES, "/api/v1/teams": TEAMS,
    f"/api/v1/nodes/{NODES['nodes'][1]['name']}": STORY,
    f"/api/v1/nodes/{NODES['nodes'][1]['name']}/marks": MARKS,
}  # fmt: skip


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def canned_api(monkeypatch: pytest.MonkeyPatch) -> None:
    def fetch(base_url: str, path: str, timeout_s: float = 5.0) -> Any:
        if path not in API:
            raise client.ApiUnreachable(f"no node {path.rsplit('/', 1)[-1]!r} is known")
        return json.loads(json.dumps(API[path]))

    monkeypatch.setattr(client, "fetch", fetch)
    monkeypatch.setattr("time.time", lambda: NOW)


def seen(monkeypatch: pytest.MonkeyPatch, *argv: str, columns: int | None) -> str:
    """What the command prints on a terminal ``columns`` wide, or piped (None)."""
    out: io.StringIO = Terminal() if columns else io.StringIO()
    if columns:
        monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(list(argv)) == 0
    return ANSI.sub("", out.getvalue())


def column(shown: str, header: str) -> list[str]:
    """The text under ``header``, line by line, as a person reads down a column."""
    lines = shown.splitlines()
    at = next(i for i, line in enumerate(lines) if re.search(rf"\b{header}\b", line))
    start = lines[at].index(header)
    later = re.search(r"\S\s{2,}\S", lines[at][start:])  # where the next header starts
    end = start + later.end() - 1 if later else None
    return [line[start:end].strip() for line in lines[at + 1:] if line[start:end].strip()]


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_task_names_are_whole_at_every_width(monkeypatch: pytest.MonkeyPatch, columns: int) -> None:
    shown = seen(monkeypatch, "tasks", columns=columns)
    for task in TASKS["tasks"]:
        assert task["task"] in shown
    assert "…" not in shown


@pytest.mark.parametrize("columns", [80, 100, 200])
def test_no_table_line_is_wider_than_the_terminal(
    monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    for command in ("tasks", "nodes", "teams"):
        lines = seen(monkeypatch, command, columns=columns).splitlines()
        assert max(len(line) for line in lines) <= columns, command


def test_at_100_columns_lesser_task_columns_go_and_the_rest_stay_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header = seen(monkeypatch, "tasks", columns=100).splitlines()[1]
    assert header.split()[:2] == ["Task", "State"]
    assert "Nodes" not in header and "Requeues" not in header


def test_task_times_read_as_durations_not_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = seen(monkeypatch, "tasks", columns=200)
    assert "1h 13m" in shown and "1d 2h" in shown and "1m 2s" in shown
    assert "4397.6" not in shown and "93784" not in shown


def test_headers_are_words_not_field_names(monkeypatch: pytest.MonkeyPatch) -> None:
    teams = seen(monkeypatch, "teams", columns=200)
    tasks = seen(monkeypatch, "tasks", columns=200)
    assert "Pending tasks" in teams and "Priority class" in tasks and "Waited" in tasks
    assert "pending_tasks" not in teams and "priority_class" not in tasks


def test_a_long_reason_wraps_on_a_narrow_terminal_instead_of_being_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shown = seen(monkeypatch, "nodes", columns=100)
    assert "XID 79 on GPU 2 at 14:02 UTC and 1 other fault" in " ".join(column(shown, "Reason"))
    assert NODES["nodes"][1]["name"] in shown


def test_an_80_column_terminal_drops_instance_type_before_lifecycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header = seen(monkeypatch, "nodes", columns=80).splitlines()[1]
    assert "Lifecycle" in header and "Instance type" not in header


def test_piped_output_is_tab_separated_rows_with_every_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = seen(monkeypatch, "tasks", columns=None).splitlines()
    rows = [line.split("\t") for line in lines]
    assert rows[0][:3] == ["Task", "State", "Team"] and "Nodes" in rows[0]
    assert len(rows) == 1 + len(TASKS["tasks"])
    assert all(len(row) == len(rows[0]) for row in rows)
    assert rows[1][0] == LONG_TASK


def test_json_prints_the_api_answer_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    assert json.loads(seen(monkeypatch, "tasks", "--json", columns=None)) == TASKS


def test_teams_show_the_unassigned_line_and_that_borrowed_equals_lent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = seen(monkeypatch, "teams", columns=200).splitlines()
    unassigned = next(line.split() for line in lines if line.startswith("(unassigned)"))
    assert unassigned[3:5] == ["8", "4"]  # unassigned capacity, in use by borrowers
    assert "borrowed 6 = lent by teams 2 + unassigned in use 4" in " ".join(lines)


def test_a_node_story_shows_its_reason_findings_per_gpu_history_and_marks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = NODES["nodes"][1]["name"]
    shown = seen(monkeypatch, "nodes", name, columns=100)
    words = " ".join(shown.split())
    assert "pending-reboot for 3m 10s" in words
    assert "XID 79 on GPU 2 at 14:02 UTC and 1 other fault" in words
    findings = [line.split() for line in shown.splitlines() if "XID-79" in line or "DISK-FULL"
                in line]  # fmt: skip
    assert [f[:2] for f in findings] == [["2", "XID-79"], ["host", "DISK-FULL"]]
    assert "healthy -> pending-reboot" in shown
    assert "label UnschedulablePendingReboot, cordoned by gpuwarden, Ready" in words


def test_a_node_story_piped_is_tab_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = seen(monkeypatch, "nodes", NODES["nodes"][1]["name"], columns=None)
    assert "2\tXID-79\tcritical\treboot\t" in shown


def test_an_unknown_node_says_how_to_list_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_found(base_url: str, path: str, timeout_s: float = 5.0) -> Any:
        raise client.NotFound("no node 'gpu-x' is known")

    monkeypatch.setattr(client, "fetch", not_found)
    assert cli.main(["nodes", "gpu-x"]) == 1
    assert capsys.readouterr().err.strip() == (
        "gpuwarden nodes: no node 'gpu-x' is known; `gpuwarden nodes` lists what the "
        "coordinator knows"
    )


def test_agent_supplied_strings_are_printed_as_text_not_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hostile = {**NODES["nodes"][0], "name": "[bold]n1", "instance_type": "[link=x]t",
               "reason": "[/]broken[red]"}  # fmt: skip
    monkeypatch.setitem(API, "/api/v1/nodes", {"nodes": [hostile]})
    shown = seen(monkeypatch, "nodes", columns=200)
    assert "[bold]n1" in shown and "[link=x]t" in shown and "[/]broken[red]" in shown


def test_a_task_flagged_idle_says_so_in_its_state() -> None:
    from coordinator.views import tasks_view  # noqa: PLC0415

    task = {"task": "research/llama", "state": "running", "team": "research", "gpus": 8,
            "idle_since": 1_767_225_600.0 + 9 * 3600}  # fmt: skip
    [table] = tasks_view([task])
    assert table.rows[0][1].text == "running, idle since 09:00 UTC"  # type: ignore[union-attr]
