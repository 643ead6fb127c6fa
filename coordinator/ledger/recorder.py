"""The coordinator's ledger loop, while this replica leads: observe governance every
``sample_s``, write the books every ``flush_s`` (in a thread: the event loop, and so the
ingest path, never waits for the store), prune past the retention once a day, and flag
idle allocations.

A flush that fails keeps its books for the next one (and counts in
``gpuwarden_ledger_flushes{outcome="failed"}``); the store's coverage then ends at the last
good flush, so a coordinator that dies with a failing store leaves a missing period, never
a silent hole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.ledger.accrue import AccrualConfig, Readings
from coordinator.ledger.books import LedgerBooks
from coordinator.ledger.idle import IdleChange, IdleWatch
from coordinator.ledger.ledger import Ledger, TeamNow
from coordinator.ledger.metrics import LedgerMetrics
from coordinator.ledger.observe import observe
from coordinator.ledger.prices import Prices
from coordinator.ledger.sources import Accountable, GovernanceView
from coordinator.store import Store, StoreError
from gpuwarden_common.aio import raise_if_cancelled

log = structlog.get_logger("coordinator.ledger")

DAY = 86400.0


@dataclass(frozen=True)
class LedgerSettings:
    sample_s: float = 5.0
    flush_s: float = 15.0
    retention_s: float = 400 * DAY
    idle_threshold_pct: float = 5.0
    idle_after_s: float = 1800.0
    stale_s: float = 60.0
    """A node's report stands for it this long (the coordinator's offline grace)."""
    prices: Prices | None = None
    """The ``--prices`` table: reports from the API show cost with it."""


class LedgerRecorder:
    def __init__(
        self,
        store: Store,
        writer: str,
        source: Accountable,
        readings: Readings,
        node_types: Callable[[], Mapping[str, str]],
        settings: LedgerSettings,
        audit: AuditLog,
        metrics: LedgerMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.writer = writer
        self.source = source
        self.settings = settings
        self._readings = readings
        self._node_types = node_types
        self._audit = audit
        self._metrics = metrics
        self._clock = clock
        self.ledger: Ledger | None = None

    @property
    def teams(self) -> Mapping[str, TeamNow]:
        """Each team now, while recording (empty otherwise)."""
        return self.ledger.teams if self.ledger is not None else {}

    async def run(self) -> None:
        """Record until cancelled (losing the lead, stopping); the last flush on the way out
        ends this replica's coverage where its knowledge ends."""
        s = self.settings
        ledger = self.ledger = Ledger(
            LedgerBooks(self.store, self.writer), self._readings, self._node_types,
            AccrualConfig(s.idle_threshold_pct, s.stale_s),
            IdleWatch(s.idle_threshold_pct, s.idle_after_s),
        )  # fmt: skip
        last_flush = last_prune = self._clock()
        try:
            while True:
                raise_if_cancelled()
                view = self.source.accounting_view()
                if view is not None:
                    changes = ledger.observe(observe(view.state, view.policy, view.now,
                                                     view.owners))  # fmt: skip
                    self._metrics.observe(ledger.teams)
                    if changes:
                        await self._idle_changed(view, changes)
                now = self._clock()
                if now - last_flush >= s.flush_s:
                    last_flush = now
                    await self._flush(ledger, now)
                if now - last_prune >= DAY:
                    last_prune = now
                    await self._prune(now)
                await asyncio.sleep(s.sample_s)
        except asyncio.CancelledError:
            # the coverage must end where this replica stopped knowing: flush what it has
            await asyncio.shield(self._flush(ledger, self._clock()))
            raise
        finally:
            self.ledger = None

    async def _flush(self, ledger: Ledger, now: float) -> None:
        pending = ledger.take(now)
        if pending is None:
            return
        try:
            await asyncio.to_thread(ledger.write, pending)
        except (StoreError, OSError, RuntimeError) as exc:
            ledger.give_back(pending)
            self._metrics.flushes.labels("failed").inc()
            log.error("cannot write the usage ledger; keeping it to retry", error=str(exc),
                      store=self.store.display)  # fmt: skip
            return
        self._metrics.flushes.labels("ok").inc()
        self._metrics.last_flush.set(now)

    async def _prune(self, now: float) -> None:
        books = LedgerBooks(self.store, self.writer)
        try:
            await asyncio.to_thread(books.prune, now - self.settings.retention_s)
        except (StoreError, OSError, RuntimeError) as exc:
            log.error("cannot prune the usage ledger", error=str(exc))

    async def _idle_changed(self, view: GovernanceView, changes: list[IdleChange]) -> None:
        entries = []
        for change in changes:
            name, queued_at = change.key
            task = view.state.tasks.get(name)
            if task is not None and task.queued_at == queued_at:
                task.idle_since = change.since if change.flagged else None
            team = _team_of(view, name)
            util = "unmeasured" if change.utilization_pct is None \
                else f"{change.utilization_pct:.1f}%"  # fmt: skip
            if change.flagged:
                self._metrics.idle_flags.labels(team or "").inc()
                reason = (f"holds GPUs at {util}, under {self.settings.idle_threshold_pct:g}% "
                          f"since {time.strftime('%H:%M:%S UTC', time.gmtime(change.since))}")
            else:
                reason = f"busy again ({util})" if change.utilization_pct is not None \
                    else "no longer holds GPUs"  # fmt: skip
            entries.append(AuditEntry(
                kind=AuditKind.DECISION, actor=self.writer, task=name, team=team,
                action="task-idle" if change.flagged else "task-busy", reason=reason,
                details={"idle_since": change.since, "utilization_pct": change.utilization_pct},
            ))  # fmt: skip
        try:
            await asyncio.to_thread(_record_all, self._audit, entries)
        except (StoreError, OSError, RuntimeError) as exc:
            log.error("cannot audit idle allocations", error=str(exc))


def _team_of(view: GovernanceView, task: str) -> str | None:
    namespace = task.split("/", 1)[0]
    team = view.policy.team_for_namespace(namespace)
    return team.name if team is not None else None


def _record_all(audit: AuditLog, entries: list[AuditEntry]) -> None:
    for entry in entries:
        audit.record(entry)
