"""The ledger as the coordinator's API sees it: reports from the store, and each team's
utilization now for the teams table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from coordinator.ledger.books import read_rows
from coordinator.ledger.prices import Prices
from coordinator.ledger.recorder import LedgerRecorder
from coordinator.ledger.report import Report, summary_report, tasks_report
from coordinator.store import Store

REPORT_KINDS = ("summary", "tasks")


class UsageService:
    def __init__(
        self,
        store: Store,
        recorder: LedgerRecorder | None,
        prices: Prices | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.prices = prices
        self.clock = clock

    @property
    def grace_s(self) -> float:
        """What a running coordinator has not written yet is not a gap."""
        flush = self.recorder.settings.flush_s if self.recorder is not None else 15.0
        return 2 * flush + 5

    async def report(self, kind: str, start: float, end: float, team: str | None) -> Report:
        """Read and built in a worker thread: a month's task report is 100,000 rows, which
        the event loop (ingest, fault handling) must not wait for."""
        return await asyncio.to_thread(self._report, kind, start, end, team, self.clock())

    def _report(self, kind: str, start: float, end: float, team: str | None,
                now: float) -> Report:  # fmt: skip
        rows = read_rows(self.store, start, end, team, kind == "tasks")
        if kind == "tasks":
            return tasks_report(rows, start, end, now, grace_s=self.grace_s)
        return summary_report(rows, start, end, now, prices=self.prices, grace_s=self.grace_s)

    def with_utilization(self, teams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The teams table's Utilization: measured use over measured GPUs, now."""
        if self.recorder is None:
            return teams
        now = self.recorder.teams
        for row in teams:
            team = now.get(str(row.get("name")))
            if team is not None and row.get("utilization_pct") is None:
                row["utilization_pct"] = team.utilization_pct
                row["idle_tasks"] = team.idle_tasks
        return teams
