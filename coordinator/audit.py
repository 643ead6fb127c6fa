"""The append-only audit log: every decision and action, before and after it runs.

In the coordinator's store (:mod:`coordinator.store`): an embedded SQLite file under
``--state``, or PostgreSQL that both replicas share, so a failover does not split the trail.
Append-only is enforced twice: this module offers no way to change or remove a row, and
triggers in the database refuse UPDATE and DELETE from anyone else.

A restart reads :meth:`AuditLog.pending_actions` (actions started and never finished) to
know what may have been cut off, rather than running it a second time blindly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from coordinator.store import Store, StoreError
from coordinator.store.sqlite import SqliteStore

MAX_QUERY_LIMIT = 10_000


class AuditKind(StrEnum):
    DECISION = "decision"
    ACTION_STARTED = "action_started"
    ACTION_FINISHED = "action_finished"
    OPERATOR = "operator"
    ALERT = "alert"
    POLICY = "policy"
    # coordinator start, stop, leadership gained or lost
    SYSTEM = "system"


# the store's errors are the audit log's: a newer schema, an unreachable database
AuditLogError = StoreError


@dataclass(frozen=True, kw_only=True)
class AuditEntry:
    """One thing to record. ``actor`` is who: the coordinator's id or an operator's name.

    The subject is a node, or a task and/or team. An ``action_finished`` entry names the
    ``action_started`` entry it closes in ``started_id``.
    """

    kind: AuditKind
    actor: str
    node: str | None = None
    task: str | None = None
    team: str | None = None
    action: str | None = None
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    dry_run: bool = False
    started_id: int | None = None
    ts: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class AuditRecord(AuditEntry):
    """An entry as stored, with the id the log gave it (increasing with time of writing)."""

    id: int


_COLUMNS = (
    "id, ts, kind, actor, node, task, team, action, reason, details, outcome, dry_run, started_id"
)


class AuditLog:
    """Thread-safe: the store serializes calls (writes are small and rare; callers on the
    event loop use ``asyncio.to_thread``).

    ``AuditLog(path)`` opens an embedded store of its own at ``path``; :meth:`on` writes to
    a store shared with the ledger (``--store``). ``durable`` makes each record reach the
    disk before :meth:`record` returns, so an action recorded as started is known to a
    coordinator restarted after a power loss (PostgreSQL always is).
    """

    def __init__(self, path: Path | str, *, durable: bool = True) -> None:
        self.path = Path(path)
        self.store: Store = SqliteStore(self.path, durable=durable)
        self._owned = True

    @classmethod
    def on(cls, store: Store) -> AuditLog:
        """The audit log in ``store``, which the caller keeps and closes."""
        log = cls.__new__(cls)
        log.path = Path(getattr(store, "path", store.display))
        log.store = store
        log._owned = False
        return log

    def close(self) -> None:
        if self._owned:
            self.store.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def record(self, entry: AuditEntry) -> int:
        """Append ``entry``; returns its id. Details that JSON cannot hold are stringified,
        since failing to audit over a stray datetime would be worse."""
        details = json.dumps(dict(entry.details), sort_keys=True, default=str)
        return self.store.run(lambda tx: tx.insert(
                "INSERT INTO audit (ts, kind, actor, node, task, team, action, reason, details,"
                " outcome, dry_run, started_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.ts,
                    AuditKind(entry.kind).value,
                    entry.actor,
                    entry.node,
                    entry.task,
                    entry.team,
                    entry.action,
                    entry.reason,
                    details,
                    entry.outcome,
                    int(entry.dry_run),
                    entry.started_id,
                ),
        ))

    def finish(
        self,
        started: AuditRecord | int,
        *,
        actor: str,
        outcome: str,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """Record that a started action ended, copying its subject and action."""
        start = self.get(started) if isinstance(started, int) else started
        if start is None or start.kind is not AuditKind.ACTION_STARTED:
            raise AuditLogError(f"entry {started!r} is not a started action")
        return self.record(
            AuditEntry(
                kind=AuditKind.ACTION_FINISHED,
                actor=actor,
                node=start.node,
                task=start.task,
                team=start.team,
                action=start.action,
                reason=reason,
                details=details or {},
                outcome=outcome,
                dry_run=start.dry_run,
                started_id=start.id,
            )
        )

    def get(self, entry_id: int) -> AuditRecord | None:
        rows = self._select(f"SELECT {_COLUMNS} FROM audit WHERE id = ?", (entry_id,))
        return rows[0] if rows else None

    def query(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        node: str | None = None,
        kind: AuditKind | None = None,
        actor: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest ``limit`` entries matching every filter given, newest first."""
        if not 1 <= limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT}, not {limit}")
        where: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("ts", ">=", since),
            ("ts", "<", until),
            ("node", "=", node),
            ("kind", "=", None if kind is None else AuditKind(kind).value),
            ("actor", "=", actor),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return self._select(
            f"SELECT {_COLUMNS} FROM audit {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )

    def last_for_node(self, node: str, kind: AuditKind | None = None) -> AuditRecord | None:
        found = self.query(node=node, kind=kind, limit=1)
        return found[0] if found else None

    def pending_actions(self) -> list[AuditRecord]:
        """Actions started and never finished, oldest first: what a crash may have cut off.

        Dry-run starts are included (they carry ``dry_run=True``) since a dry-run
        coordinator records them the same way.
        """
        return self._select(
            f"SELECT {_COLUMNS} FROM audit AS started WHERE kind = ? AND NOT EXISTS ("
            " SELECT 1 FROM audit AS finished"
            " WHERE finished.started_id = started.id AND finished.kind = ?"
            ") ORDER BY id",
            (AuditKind.ACTION_STARTED.value, AuditKind.ACTION_FINISHED.value),
        )

    def count(self) -> int:
        return int(self.store.run(lambda tx: tx.fetchall("SELECT count(*) FROM audit"))[0][0])

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[AuditRecord]:
        rows = self.store.run(lambda tx: tx.fetchall(sql, params))
        return [_record(row) for row in rows]


def _record(row: tuple[Any, ...]) -> AuditRecord:
    (row_id, ts, kind, actor, node, task, team, action, reason, details, outcome, dry_run,
     started_id) = row  # fmt: skip
    return AuditRecord(
        id=row_id,
        ts=ts,
        kind=AuditKind(kind),
        actor=actor,
        node=node,
        task=task,
        team=team,
        action=action,
        reason=reason,
        details=json.loads(details),
        outcome=outcome,
        dry_run=bool(dry_run),
        started_id=started_id,
    )
