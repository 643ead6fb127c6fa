"""The ledger's SQL: writing a flush, pruning, and reading rows for reports.

A flush is one transaction: the hours' GPU-seconds are added to their rows, the task facts
replace the old ones, and this writer's coverage (the span it recorded) is extended. A
flush that fails leaves nothing behind, and the recorder keeps its books to try again: the
coverage never claims a span whose GPU-seconds are not in the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.ledger.accrue import DAY, TASK_COLUMNS, TEAM_COLUMNS, Books
from coordinator.store import Store, Transaction

COORDINATOR = "coordinator"
NODE = "node"

_TEAM_SQL = (
    f"INSERT INTO ledger_hourly (hour, team, instance_type, {', '.join(TEAM_COLUMNS)}) "
    f"VALUES (?, ?, ?, {', '.join('?' * len(TEAM_COLUMNS))}) "
    "ON CONFLICT (hour, team, instance_type) DO UPDATE SET "
    + ", ".join(f"{c} = ledger_hourly.{c} + excluded.{c}" for c in TEAM_COLUMNS)
)
_CLUSTER_SQL = (
    "INSERT INTO ledger_cluster_hourly (hour, instance_type, healthy, allocated) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (hour, instance_type) DO UPDATE SET "
    "healthy = ledger_cluster_hourly.healthy + excluded.healthy, "
    "allocated = ledger_cluster_hourly.allocated + excluded.allocated"
)
_TASK_DAY_SQL = (
    f"INSERT INTO ledger_task_daily (task, queued_at, day, {', '.join(TASK_COLUMNS)}) "
    f"VALUES (?, ?, ?, {', '.join('?' * len(TASK_COLUMNS))}) "
    "ON CONFLICT (task, queued_at, day) DO UPDATE SET "
    + ", ".join(f"{c} = ledger_task_daily.{c} + excluded.{c}" for c in TASK_COLUMNS)
)
_TASK_SQL = (
    "INSERT INTO ledger_tasks (task, queued_at, team, priority_class, gpus, first_start, "
    "last_end, status, preemptions, requeues, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (task, queued_at) DO UPDATE SET team = excluded.team, "
    "priority_class = excluded.priority_class, gpus = excluded.gpus, "
    "first_start = CASE WHEN ledger_tasks.first_start IS NULL OR (excluded.first_start IS NOT "
    "NULL AND excluded.first_start < ledger_tasks.first_start) THEN excluded.first_start "
    "ELSE ledger_tasks.first_start END, last_end = excluded.last_end, status = excluded.status, "
    "preemptions = excluded.preemptions, requeues = excluded.requeues, updated = excluded.updated"
)


@dataclass(frozen=True)
class Silence:
    """A node's silence began (``ended`` None) or ended."""

    node: str
    at: float
    began: bool


class LedgerBooks:
    """One coordinator's writes to the ledger (``writer``: its identity) and everyone's
    reads."""

    def __init__(self, store: Store, writer: str) -> None:
        self.store = store
        self.writer = writer
        self._coverage: int | None = None

    def flush(self, books: Books, start: float, until: float,
              silences: Sequence[Silence] = ()) -> None:  # fmt: skip
        """Write ``books``; this writer has recorded from ``start`` (its first observation)
        to ``until``. The first flush of a writer also records the gap since the store's
        last coverage as missing: no coordinator was recording then."""
        # known only once committed: a first flush that failed starts the span over
        self._coverage = self.store.run(
            lambda tx: self._flush(tx, books, start, until, silences)
        )

    def _flush(self, tx: Transaction, books: Books, start: float, until: float,
               silences: Sequence[Silence]) -> int:  # fmt: skip
        if self._coverage is None:
            last = tx.fetchall("SELECT max(ended) FROM ledger_coverage")[0][0]
            if last is not None and last < start:
                tx.execute(
                    "INSERT INTO ledger_missing (kind, subject, started, ended, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (COORDINATOR, COORDINATOR, last, start,
                     "no coordinator recorded usage (stopped, restarting or failing over)"),
                )  # fmt: skip
            if last is not None:
                # silences the writer before us left open end where its knowledge did
                tx.execute("UPDATE ledger_missing SET ended = ? WHERE ended IS NULL",
                           (max(last, 0.0),))  # fmt: skip
            coverage = tx.insert(
                "INSERT INTO ledger_coverage (writer, started, ended) VALUES (?, ?, ?)",
                (self.writer, start, until),
            )
        else:
            coverage = self._coverage
            tx.execute("UPDATE ledger_coverage SET ended = ? WHERE id = ?", (until, coverage))
        tx.executemany(_TEAM_SQL, [(*k, *v) for k, v in books.teams.items()])
        tx.executemany(_CLUSTER_SQL, [(*k, *v) for k, v in books.cluster.items()])
        tx.executemany(_TASK_DAY_SQL, [(*k, *v) for k, v in books.tasks.items()])
        tx.executemany(_TASK_SQL, [
            (f.key[0], f.key[1], f.team, f.priority_class, f.gpus,
             books.first_start.get(f.key), f.finished_at, f.state, f.preemptions, f.requeues,
             until)
            for f in books.facts.values()
        ])  # fmt: skip
        for s in silences:
            if s.began:
                tx.execute(
                    "INSERT INTO ledger_missing (kind, subject, started, ended, reason) "
                    "VALUES (?, ?, ?, NULL, ?)",
                    (NODE, s.node, s.at, "the node's agent was silent: its GPUs' use unmeasured"),
                )
            else:
                tx.execute(
                    "UPDATE ledger_missing SET ended = ? WHERE kind = ? AND subject = ? "
                    "AND ended IS NULL", (s.at, NODE, s.node),
                )  # fmt: skip
        return coverage

    def prune(self, before: float) -> None:
        """Drop ledger rows older than ``before`` (the retention); the audit log is kept."""
        day = int(before // DAY) * DAY

        def work(tx: Transaction) -> None:
            tx.execute("DELETE FROM ledger_hourly WHERE hour < ?", (int(before),))
            tx.execute("DELETE FROM ledger_cluster_hourly WHERE hour < ?", (int(before),))
            tx.execute("DELETE FROM ledger_task_daily WHERE day < ?", (day,))
            tx.execute("DELETE FROM ledger_tasks WHERE updated < ?", (before,))
            tx.execute("DELETE FROM ledger_coverage WHERE ended < ?", (before,))
            tx.execute("DELETE FROM ledger_missing WHERE ended < ?", (before,))

        self.store.run(work)


def read_rows(store: Store, start: float, end: float, team: str | None,
              tasks: bool) -> dict[str, list[tuple[Any, ...]]]:  # fmt: skip
    """What a report over ``[start, end)`` reads, in one transaction (a consistent view)."""
    team_clause, team_params = ("AND team = ?", (team,)) if team else ("", ())

    def work(tx: Transaction) -> dict[str, list[tuple[Any, ...]]]:
        out = {
            "teams": tx.fetchall(
                f"SELECT (hour / {DAY}) * {DAY}, team, instance_type, "
                + ", ".join(f"sum({c})" for c in TEAM_COLUMNS)
                + f" FROM ledger_hourly WHERE hour >= ? AND hour < ? {team_clause}"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
                (int(start), int(end), *team_params),
            ),
            "cluster": tx.fetchall(
                f"SELECT (hour / {DAY}) * {DAY}, instance_type, sum(healthy), sum(allocated) "
                "FROM ledger_cluster_hourly WHERE hour >= ? AND hour < ? GROUP BY 1, 2 "
                "ORDER BY 1, 2", (int(start), int(end)),
            ),
            "coverage": tx.fetchall(
                "SELECT started, ended, writer FROM ledger_coverage WHERE ended > ? AND "
                "started < ? ORDER BY started", (start, end),
            ),
            "missing": tx.fetchall(
                "SELECT kind, subject, started, ended, reason FROM ledger_missing WHERE "
                "started < ? AND (ended IS NULL OR ended > ?) ORDER BY started, subject",
                (end, start),
            ),
        }  # fmt: skip
        if tasks:
            # summed per task first, in the key's order (+day: not through the day index, whose
            # random reads cost more than a scan for a month), then joined
            out["tasks"] = tx.fetchall(
                "SELECT t.task, t.queued_at, t.team, t.priority_class, t.gpus, t.first_start, "
                "t.last_end, t.status, t.preemptions, t.requeues, "
                + ", ".join(f"d.{c}" for c in TASK_COLUMNS)
                + " FROM (SELECT task, queued_at, "
                + ", ".join(f"sum({c}) AS {c}" for c in TASK_COLUMNS)
                + " FROM ledger_task_daily WHERE +day >= ? AND +day < ? GROUP BY task, queued_at)"
                " AS d JOIN ledger_tasks t ON t.task = d.task AND t.queued_at = d.queued_at "
                f"{'WHERE t.team = ?' if team else ''} ORDER BY t.first_start, t.task",
                (int(start // DAY) * DAY, int(end), *team_params),
            )
        return out

    return store.run(work)
