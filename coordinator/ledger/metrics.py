"""The ledger's Prometheus metrics: per team, what it holds, borrows and uses now."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from coordinator.ledger.ledger import TeamNow


class LedgerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.allocated = Gauge("gpuwarden_team_gpus_allocated",
                               "GPUs the team's tasks hold (admitted, running, preempting)",
                               ["team"], registry=r)  # fmt: skip
        self.borrowed = Gauge("gpuwarden_team_gpus_borrowed",
                              "Of them, GPUs beyond the team's guarantee", ["team"], registry=r)
        self.used = Gauge("gpuwarden_team_gpus_used",
                          "GPUs' worth of measured work: utilization summed over the team's "
                          "measured GPUs", ["team"], registry=r)  # fmt: skip
        self.measured = Gauge("gpuwarden_team_gpus_measured",
                              "Of the allocated GPUs, those on nodes whose agents report",
                              ["team"], registry=r)  # fmt: skip
        self.idle_tasks = Gauge("gpuwarden_team_tasks_idle",
                                "Tasks flagged idle: holding GPUs under the idle threshold for "
                                "longer than --idle-after", ["team"], registry=r)  # fmt: skip
        self.idle_flags = Counter("gpuwarden_tasks_flagged_idle",
                                  "Times a task was flagged idle", ["team"], registry=r)
        self.flushes = Counter("gpuwarden_ledger_flushes", "Ledger writes to the store",
                               ["outcome"], registry=r)  # fmt: skip
        self.last_flush = Gauge("gpuwarden_ledger_last_flush_timestamp_seconds",
                                "When the ledger last wrote to the store", registry=r)
        self._teams: set[str] = set()

    def observe(self, teams: Mapping[str, TeamNow]) -> None:
        for team in self._teams - set(teams):  # a team with nothing held shows zeros
            for gauge in (self.allocated, self.borrowed, self.used, self.measured,
                          self.idle_tasks):  # fmt: skip
                gauge.labels(team).set(0)
        for team, now in teams.items():
            self.allocated.labels(team).set(now.allocated)
            self.borrowed.labels(team).set(now.borrowed)
            self.used.labels(team).set(round(now.used, 3))
            self.measured.labels(team).set(now.measured)
            self.idle_tasks.labels(team).set(now.idle_tasks)
        self._teams |= set(teams)
