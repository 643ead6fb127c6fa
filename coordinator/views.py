"""What ``gpuwarden status|nodes|teams|tasks`` show: the API's JSON turned into tables with
human headers and values. Pure; :mod:`coordinator.tables` lays them out, the CLI prints.

Column importance (0 is never dropped) says what goes first on a narrow terminal: names stay,
then what a person decides on (lifecycle, reason, state), and details such as instance type or
namespace go first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.definitions import GPU_BUCKETS, GPUS_TOTAL, TEAM_TERMS, UNASSIGNED, Term
from coordinator.lifecycle import Lifecycle
from coordinator.tables import Cell, CellLike, Column, Row, Table, duration

Json = Mapping[str, Any]

HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "unknown": "magenta",
                "unhealthy": "red"}  # fmt: skip
SEVERITY_STYLE = {"ok": "green", "warning": "yellow", "critical": "red"}


def health_cell(health: str | None) -> Cell:
    value = health or "unknown"
    return Cell(value, HEALTH_STYLE.get(value, ""))


def utc(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def ago(ts: float | None, now: float) -> str:
    return "never" if not ts else f"{duration(now - ts)} ago"


# --- status -----------------------------------------------------------------------------------


def status_view(cluster: Json) -> list[Table]:
    cap = cluster.get("capacity", {})
    by_state = cluster.get("nodes_by_lifecycle", {})
    blank = Cell("")
    rows: list[Row] = [("Nodes", cluster.get("nodes_total", 0), blank)]
    rows += [(f"Nodes {s.value}", by_state[s.value], blank)
             for s in Lifecycle if by_state.get(s.value)]  # fmt: skip
    rows += [_bucket_row(GPUS_TOTAL, cap)]
    rows += [_bucket_row(term, cap) for term in GPU_BUCKETS]
    util = cluster.get("utilization_pct")
    rows.append(("GPU utilization", "-" if util is None else f"{util:.1f}%",
                 "Mean over the GPUs that report it."))  # fmt: skip
    if cluster.get("remediation_paused"):
        rows.append((Cell("Remediation", "bold red"), Cell("PAUSED", "bold red"),
                     cluster.get("paused_reason", "")))  # fmt: skip
    columns = (Column("What", 0), Column("Value", 0, right=True),
               Column("Meaning", 1, wrap=True))  # fmt: skip
    return [Table(columns, rows, title=f"cluster {cluster.get('cluster', '?')}")]


def _bucket_row(term: Term, capacity: Json) -> Row:
    return (term.label, capacity.get(term.key, 0), term.definition)


# --- nodes ------------------------------------------------------------------------------------

NODE_COLUMNS = (
    Column("Node", 0),
    Column("Lifecycle", 1),
    Column("Reason", 2, wrap=True),
    Column("Health", 3),
    Column("GPUs ok", 3, right=True),
    Column("Pending action", 5),
    Column("Agent", 6),
    Column("Last seen", 6, right=True),
    Column("Instance type", 7),
)


def nodes_view(nodes: Sequence[Json], now: float) -> list[Table]:
    rows = [
        (n["name"], n.get("lifecycle"), n.get("reason"), health_cell(n.get("health")),
         f"{n.get('gpus_healthy', 0)}/{n.get('gpus_total', 0)}", n.get("action"),
         n.get("agent"), ago(n.get("last_seen"), now), n.get("instance_type"))
        for n in nodes
    ]  # fmt: skip
    noun = "node" if len(nodes) == 1 else "nodes"
    return [Table(NODE_COLUMNS, rows, title=f"{len(nodes)} {noun}",
                  note="gpuwarden nodes NAME tells one node's story")]  # fmt: skip


# --- one node's story -------------------------------------------------------------------------


def node_story_view(node: Json, marks: Json | None, now: float) -> list[Table]:
    since = node.get("since")
    held = " (operator hold)" if node.get("hold") else ""
    facts: list[Row] = [
        ("Lifecycle", f"{node.get('lifecycle')} for {duration(now - since) if since else '-'},"
                      f" since {utc(since)} UTC{held}"),
        ("Reason", node.get("reason")),
        ("Health", Cell(f"{node.get('health')}, pending action {node.get('action')}",
                        HEALTH_STYLE.get(str(node.get("health")), ""))),
        ("GPUs", f"{node.get('gpus_healthy', 0)} of {node.get('gpus_total', 0)} healthy"),
        ("Agent", f"{node.get('agent')}, last seen {ago(node.get('last_seen'), now)}"),
        ("Marks", marks_text(marks)),
        ("Instance type", node.get("instance_type")),
        ("Driver", node.get("driver_version")),
        ("Boot", node.get("boot_id")),
    ]  # fmt: skip
    fact_columns = (Column("Field", 0), Column("Value", 0, wrap=True))
    tables = [Table(fact_columns, facts, title=f"node {node.get('name')}", header=False)]
    tables.append(_findings_table(node.get("findings") or [], now))
    tables.append(_history_table(node.get("history") or []))
    return tables


def marks_text(marks: Json | None) -> str:
    """The cluster's marks in words, and a mismatch with what the lifecycle asks for."""
    if marks is None:
        return "unknown"
    if "error" in marks:
        return f"could not be read from the {marks.get('actuator')} actuator: {marks['error']}"
    if not marks.get("exists", True):
        return f"the node is not in the cluster ({marks.get('actuator')} actuator)"
    label = marks.get("label")
    parts = [f"label {label}" if label else "no gpuwarden label"]
    if marks.get("cordoned"):
        parts.append("cordoned by gpuwarden" if marks.get("cordoned_by_gpuwarden")
                     else "cordoned by someone else")  # fmt: skip
    else:
        parts.append("not cordoned")
    if marks.get("ready") is not None:
        parts.append("Ready" if marks["ready"] else "not Ready")
    expected = marks.get("expected_label")
    # a healthy node may carry Schedulable or no label at all: both mean "in service"
    if expected and label != expected and not (expected == "Schedulable" and label is None):
        parts.append(f"its lifecycle asks for {expected}: not applied yet")
    return f"{', '.join(parts)} ({marks.get('actuator')} actuator)"


def _findings_table(findings: Sequence[Json], now: float) -> Table:
    columns = (
        Column("GPU", 0, right=True), Column("Code", 0), Column("Severity", 2),
        Column("Action", 3), Column("First seen (UTC)", 1), Column("Count", 1, right=True),
        Column("Message", 4, wrap=True), Column("Check", 5),
    )  # fmt: skip
    rows = [
        ("host" if f.get("gpu_index") is None else f["gpu_index"], f.get("code"),
         Cell(str(f.get("severity")), SEVERITY_STYLE.get(str(f.get("severity")), "")),
         f.get("action"),
         f"{utc(f.get('first_seen'))} ({ago(f.get('first_seen'), now)})",
         f.get("count", 1), f.get("message"), f.get("check"))
        for f in findings
    ]  # fmt: skip
    note = "" if rows else "no findings: every check passed"
    return Table(columns, rows, title="Current findings, GPU by GPU", note=note)


def _history_table(history: Sequence[Json]) -> Table:
    columns = (Column("Time (UTC)", 0), Column("Event", 0), Column("By", 3),
               Column("Reason", 1, wrap=True))  # fmt: skip
    rows = [
        (utc(h.get("ts")), f"{h.get('event')}{' (dry-run)' if h.get('dry_run') else ''}",
         h.get("actor"), h.get("reason"))
        for h in history
    ]  # fmt: skip
    note = "" if rows else "nothing recorded for this node"
    return Table(columns, rows, title="Lifecycle history (audit log, oldest first)", note=note)


# --- teams and tasks --------------------------------------------------------------------------

_TEAM_IMPORTANCE = {"quota": 1, "guarantee": 4, "allocated": 1, "in_use": 3, "borrowed": 1,
                    "lent": 1}  # fmt: skip


def teams_view(teams: Sequence[Json], unassigned: Json | None) -> list[Table]:
    columns = (
        Column("Team", 0), Column("Namespace", 6),
        *(Column(t.label, _TEAM_IMPORTANCE[t.key], right=True) for t in TEAM_TERMS),
        Column("Pending tasks", 2, right=True), Column("Utilization", 5, right=True),
    )  # fmt: skip
    rows: list[Row] = [
        (t["name"], t.get("namespace"), *(t.get(term.key) for term in TEAM_TERMS),
         t.get("pending_tasks"), _percent(t.get("utilization_pct")))
        for t in teams
    ]  # fmt: skip
    note = ""
    if unassigned is not None:
        # the unassigned line lends what no team owns: with it, the Lent column sums to the
        # Borrowed column
        used = unassigned.get("used", 0)
        rows.append((Cell(f"({UNASSIGNED.label.lower()})", "italic"), "-", "-",
                     unassigned.get("gpus"), used, "-", "-", used, "-", "-"))  # fmt: skip
        borrowed = sum(t.get("borrowed") or 0 for t in teams)
        lent = sum(t.get("lent") or 0 for t in teams)
        note = (f"borrowed {borrowed} = lent by teams {lent} + unassigned in use {used}. "
                f"{UNASSIGNED.label}: {UNASSIGNED.definition}")  # fmt: skip
    return [Table(columns, rows, note=note)]


def tasks_view(tasks: Sequence[Json]) -> list[Table]:
    columns = (
        Column("Task", 0), Column("State", 1), Column("Team", 2), Column("GPUs", 2, right=True),
        Column("Priority class", 4), Column("Waited", 3, right=True),
        Column("Running for", 3, right=True), Column("Requeues", 6, right=True),
        Column("Preemptions", 6, right=True), Column("Reason", 5, wrap=True),
        Column("Nodes", 7, wrap=True),
    )  # fmt: skip
    rows = [
        (t["task"], _state(t), t.get("team"), t.get("gpus"), t.get("priority_class"),
         duration(t.get("waited_s")), duration(t.get("running_s")), t.get("requeues"),
         t.get("times_preempted"), t.get("reason"),
         " ".join(f"{node}:{gpus}" for node, gpus in sorted((t.get("nodes") or {}).items())))
        for t in tasks
    ]  # fmt: skip
    return [Table(columns, rows, title=f"{len(tasks)} task{'s' * (len(tasks) != 1)}")]


def _state(task: Json) -> CellLike:
    """An idle allocation reads as such: the state, and since when its GPUs idle."""
    state = task.get("state")
    since = task.get("idle_since")
    if since is None:
        return state
    return Cell(f"{state}, idle since {utc(since)[11:16]} UTC", "yellow")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"
