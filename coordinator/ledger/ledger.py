"""The ledger of one coordinator while it leads: observations in, books out.

Not thread-safe by itself: the recorder calls :meth:`observe` and :meth:`take` on the event
loop and writes what :meth:`take` returned in a thread, so the ingest path never waits for
the store.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from coordinator.ledger.accrue import (
    DAY,
    AccrualConfig,
    Books,
    Readings,
    Shares,
    TaskUse,
    accrue,
    lost_work,
    measure,
    task_use,
)
from coordinator.ledger.books import LedgerBooks, Silence
from coordinator.ledger.idle import IdleChange, IdleWatch
from coordinator.ledger.observe import Observation, TaskFacts

TaskKey = tuple[str, float]


@dataclass(frozen=True)
class TeamNow:
    """A team's GPUs at the latest observation, for gauges and the dashboard."""

    allocated: int = 0
    borrowed: int = 0
    used: float = 0.0
    """GPUs' worth of measured work (utilization summed over measured GPUs)."""
    measured: int = 0
    idle_tasks: int = 0

    @property
    def utilization_pct(self) -> float | None:
        return round(100.0 * self.used / self.measured, 1) if self.measured else None


@dataclass
class Pending:
    """One flush's worth: the books and the span they cover."""

    books: Books
    start: float
    until: float
    silences: list[Silence]


class Ledger:
    def __init__(
        self,
        books: LedgerBooks,
        readings: Readings,
        node_types: Callable[[], Mapping[str, str]],
        accrual: AccrualConfig,
        idle: IdleWatch,
    ) -> None:
        self.writer = books
        self._readings = readings
        self._node_types = node_types
        self._accrual = accrual
        self.idle = idle
        self._books = Books()
        self._prev: Observation | None = None
        self._shares: Shares = {}
        self._start: float | None = None
        self._facts: dict[TaskKey, TaskFacts] = {}
        self._silent: set[str] = set()
        self._silences: list[Silence] = []
        self.teams: dict[str, TeamNow] = {}

    @property
    def started(self) -> float | None:
        return self._start

    def observe(self, obs: Observation) -> list[IdleChange]:
        """Account the previous observation up to this one, then take this one in."""
        if self._prev is not None and obs.at < self._prev.at:
            return []  # the clock went back: this instant was accounted already
        if self._prev is not None:
            self._accrue(self._prev, obs.at)
        elif self._start is None:
            self._start = obs.at
        for facts in obs.tasks:
            before = self._facts.get(facts.key)
            column, lost = lost_work(before, facts, obs.at)
            if lost:
                day = int(obs.at // DAY) * DAY
                self._books.add_task(facts.key, day, column, lost)
            if facts.gone:
                self._facts.pop(facts.key, None)
            else:
                self._facts[facts.key] = facts
            if before != facts:
                self._books.facts[facts.key] = facts
            first = facts.admitted_at
            if first is not None and first < self._books.first_start.get(facts.key, first + 1):
                self._books.first_start[facts.key] = first
        # each node's reading is built once per observation (silences, then shares): the
        # model's readings are built afresh on every call, 2,000 nodes' worth
        readings: Readings = functools.cache(self._readings)
        self._watch_silence(obs, readings)
        self._shares = measure(obs.holdings, readings, obs.at, self._accrual)
        use = task_use(obs.holdings, self._shares)
        self._prev = obs
        changes = self.idle.update({h.key for h in obs.holdings}, use, obs.at)
        self._team_now(obs, use)
        return changes

    def _accrue(self, obs: Observation, until: float) -> None:
        if until > obs.at:
            accrue(self._books, obs, until, self._shares, self._node_types())

    def _watch_silence(self, obs: Observation, readings: Readings) -> None:
        nodes = set(obs.healthy_by_node) | {n for h in obs.holdings for n, _ in h.placement}
        nodes.discard("")
        for node in nodes:
            reading = readings(node)
            silent = reading is None or obs.at - reading.at >= self._accrual.stale_s
            if silent and node not in self._silent:
                self._silent.add(node)
                # its last report stood for it until it went stale: unmeasured from then on
                began = reading.at + self._accrual.stale_s if reading else obs.at
                self._silences.append(Silence(node, began, True))
            elif not silent and node in self._silent:
                self._silent.discard(node)
                assert reading is not None
                self._silences.append(Silence(node, reading.at, False))

    def _team_now(self, obs: Observation, use: Mapping[TaskKey, TaskUse]) -> None:
        teams: dict[str, list[float]] = {}
        for h in obs.holdings:
            row = teams.setdefault(h.team, [0, 0, 0.0, 0, 0])
            row[0] += h.gpus
            row[1] += h.borrowed
            measured = use.get(h.key)
            if measured is not None:
                row[2] += measured.measured_gpus * measured.utilization_pct / 100.0
                row[3] += measured.measured_gpus
            if h.key in self.idle.flagged:
                row[4] += 1
        self.teams = {
            team: TeamNow(int(r[0]), int(r[1]), r[2], int(r[3]), int(r[4]))
            for team, r in teams.items()
        }

    def take(self, until: float) -> Pending | None:
        """Everything up to ``until``, for one flush; None before the first observation."""
        if self._prev is None or self._start is None:
            return None
        if until > self._prev.at:
            self._accrue(self._prev, until)
            self._prev = dataclasses.replace(self._prev, at=until)
        pending = Pending(self._books, self._start, self._prev.at, self._silences)
        self._books, self._silences = Books(), []
        return pending

    def give_back(self, pending: Pending) -> None:
        """A flush failed: its books go back in, ahead of what came since."""
        pending.books.merge(self._books)
        self._books = pending.books
        self._silences = pending.silences + self._silences

    def write(self, pending: Pending) -> None:
        """Blocking: run it in a thread."""
        self.writer.flush(pending.books, pending.start, pending.until, pending.silences)
