"""GPU-seconds between two instants, added to the books by hour, team, instance type and
task. Pure: the recorder feeds it observations and readings and writes the books out.

Each observation holds from its instant until the next one. Per task and node:

* **allocated**: GPUs held x seconds; **borrowed**: its share of its team's borrowed GPUs;
* **measured**: allocated GPU-seconds on a node whose agent reported within ``stale_s``
  (a silent node's GPU-seconds are not measured, and the silence is a missing period);
* **used**: measured GPU-seconds x utilization; **idle-allocated**: measured GPU-seconds of
  GPUs under the idle threshold.

Which GPUs of a node are a task's: those whose owners (pod UIDs, Slurm job ids, from the
agent's attribution) are the task's; a task GPU with no process of it runs nothing, so it
is idle. Without owners, the node's busiest GPUs are taken to be the allocated ones (an
unallocated GPU idles) and shared among the node's tasks by their GPU counts: exact for a
node with one task, the common case for training.

Lent GPUs have no node of their own: a lender's lent GPU-seconds are split over instance
types as the borrowed GPUs run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from coordinator.ledger.observe import Holding, Observation, TaskFacts

HOUR = 3600
DAY = 86400
UNPLACED = "unplaced"
"""Instance type of GPUs a task holds before the scheduler placed its pods."""

# column order of the books' rows
TEAM_COLUMNS = ("allocated", "borrowed", "lent", "used", "measured", "idle_allocated")
TASK_COLUMNS = ("allocated", "borrowed", "used", "measured", "idle_allocated", "lost_fault",
                "lost_preemption")  # fmt: skip
ALLOCATED, BORROWED, LENT, USED, MEASURED, IDLE = range(6)
# the same amounts' places in a task's row (which has no lent, and the lost work)
_TASK_COLUMN = {ALLOCATED: 0, BORROWED: 1, USED: 2, MEASURED: 3, IDLE: 4}
LOST_FAULT, LOST_PREEMPTION = 5, 6
HEALTHY, CLUSTER_ALLOCATED = 0, 1


@dataclass(frozen=True, slots=True)
class GpuReading:
    utilization_pct: float | None
    owners: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class NodeReading:
    """A node's GPUs as its agent last reported them, and when (coordinator clock)."""

    at: float
    gpus: tuple[GpuReading, ...]


Readings = Callable[[str], NodeReading | None]


@dataclass(frozen=True)
class AccrualConfig:
    idle_threshold_pct: float = 5.0
    stale_s: float = 60.0


@dataclass
class Books:
    """GPU-seconds not yet written, and facts to write. Adding is all it does."""

    teams: dict[tuple[int, str, str], list[float]] = field(default_factory=dict)
    cluster: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    tasks: dict[tuple[str, float, int], list[float]] = field(default_factory=dict)
    facts: dict[tuple[str, float], TaskFacts] = field(default_factory=dict)
    first_start: dict[tuple[str, float], float] = field(default_factory=dict)

    def add_team(self, hour: int, team: str, itype: str, column: int, value: float) -> None:
        row = self.teams.get((hour, team, itype))
        if row is None:
            row = self.teams[hour, team, itype] = [0.0] * len(TEAM_COLUMNS)
        row[column] += value

    def add_task(self, key: tuple[str, float], day: int, column: int, value: float) -> None:
        row = self.tasks.get((key[0], key[1], day))
        if row is None:
            row = self.tasks[key[0], key[1], day] = [0.0] * len(TASK_COLUMNS)
        row[column] += value

    def add_cluster(self, hour: int, itype: str, column: int, value: float) -> None:
        row = self.cluster.get((hour, itype))
        if row is None:
            row = self.cluster[hour, itype] = [0.0, 0.0]
        row[column] += value

    def merge(self, other: Books) -> None:
        """Add ``other``, newer books, to these (a failed flush's): its task facts replace
        these ones."""
        for key, values in other.teams.items():
            for column, value in enumerate(values):
                self.add_team(*key, column, value)
        for ckey, values in other.cluster.items():
            for column, value in enumerate(values):
                self.add_cluster(*ckey, column, value)
        for tkey, values in other.tasks.items():
            for column, value in enumerate(values):
                self.add_task((tkey[0], tkey[1]), tkey[2], column, value)
        self.facts.update(other.facts)
        for fkey, start in other.first_start.items():
            self.first_start[fkey] = min(start, self.first_start.get(fkey, start))

    def empty(self) -> bool:
        return not (self.teams or self.cluster or self.tasks or self.facts)


def hours(start: float, end: float) -> Iterator[tuple[int, float]]:
    """``[start, end)`` cut at UTC hour boundaries: (hour, seconds in it)."""
    t = start
    while t < end:
        hour = int(t // HOUR) * HOUR
        stop = min(end, hour + HOUR)
        yield hour, stop - t
        t = stop


@dataclass(frozen=True)
class TaskUse:
    """One task's GPUs at an instant: how many were measured, their mean utilization."""

    measured_gpus: int
    utilization_pct: float


Shares = dict[tuple[tuple[str, float], str], "Share"]


def measure(holdings: tuple[Holding, ...], readings: Readings, at: float,
            config: AccrualConfig) -> Shares:  # fmt: skip
    """Per (task, node), the task's measured use there at ``at``, where the node's reading is
    fresh. Taken when the observation is: it holds, with the allocation, until the next."""
    return _node_shares(holdings, readings, at, config)


def task_use(holdings: tuple[Holding, ...], shares: Shares) -> dict[tuple[str, float], TaskUse]:
    """Each holding task's measured use: GPUs measured and their mean utilization."""
    use: dict[tuple[str, float], TaskUse] = {}
    for h in holdings:
        measured = busy = 0.0
        for node, gpus in h.placement:
            share = shares.get((h.key, node))
            if share is not None:
                measured += gpus
                busy += share.busy
        if measured:
            use[h.key] = TaskUse(int(measured), 100.0 * busy / measured)
    return use


def accrue(
    books: Books,
    obs: Observation,
    until: float,
    shares: Shares,
    node_types: Mapping[str, str],
) -> None:
    """Add ``obs`` (with its ``shares``, from :func:`measure`) held over ``[obs.at, until)``
    to ``books``."""
    spans = list(hours(obs.at, until))
    if not spans:
        return
    lent_by_type: dict[str, float] = {}
    for h in obs.holdings:
        places = h.placement or ((UNPLACED, h.gpus),)
        for node, gpus in places:
            itype = UNPLACED if node == UNPLACED else node_types.get(node, "unknown")
            share = shares.get((h.key, node))
            borrowed = h.borrowed * gpus / h.gpus if h.gpus else 0.0
            if borrowed:
                lent_by_type[itype] = lent_by_type.get(itype, 0.0) + borrowed
            amounts = [(ALLOCATED, gpus), (BORROWED, borrowed)]
            if share is not None:
                amounts += [(USED, share.busy), (MEASURED, gpus), (IDLE, share.idle)]
            for hour, seconds in spans:
                day = hour - hour % DAY
                for column, value in amounts:
                    if value:
                        books.add_team(hour, h.team, itype, column, value * seconds)
                        books.add_task(h.key, day, _TASK_COLUMN[column], value * seconds)
                books.add_cluster(hour, itype, CLUSTER_ALLOCATED, gpus * seconds)
    _accrue_lent(books, obs.lent, lent_by_type, spans)
    for node, gpus in obs.healthy_by_node.items():
        itype = node_types.get(node, "unknown")
        for hour, seconds in spans:
            books.add_cluster(hour, itype, HEALTHY, gpus * seconds)


def _accrue_lent(
    books: Books,
    lent: Mapping[str, int],
    borrowed_by_type: Mapping[str, float],
    spans: list[tuple[int, float]],
) -> None:
    total = sum(borrowed_by_type.values())
    for team, gpus in lent.items():
        split = {t: gpus * b / total for t, b in borrowed_by_type.items()} if total \
            else {"unknown": float(gpus)}  # fmt: skip
        for itype, share in split.items():
            for hour, seconds in spans:
                books.add_team(hour, team, itype, LENT, share * seconds)


@dataclass(frozen=True, slots=True)
class Share:
    busy: float
    """GPUs' worth of work: the sum of the task's GPUs' utilization fractions."""
    idle: float
    """Of the task's GPUs on the node, how many ran under the idle threshold."""


def _node_shares(
    holdings: tuple[Holding, ...], readings: Readings, at: float, config: AccrualConfig
) -> Shares:
    """Per (task, node): its measured use, where the node's reading is fresh."""
    on_node: dict[str, list[tuple[Holding, int]]] = {}
    for h in holdings:
        for node, gpus in h.placement:
            on_node.setdefault(node, []).append((h, gpus))
    out: Shares = {}
    threshold = config.idle_threshold_pct
    for node, tasks in on_node.items():
        reading = readings(node)
        if reading is None or at - reading.at >= config.stale_s:
            continue
        readable = [g for g in reading.gpus if g.utilization_pct is not None]
        by_owner = [
            h for h, _ in tasks if h.owners and any(h.owners & g.owners for g in readable)
        ]
        for h in by_owner:
            held = dict(h.placement)[node]
            mine = [g.utilization_pct or 0.0 for g in readable if h.owners & g.owners][:held]
            # a GPU allocated to the task with none of its processes on it runs nothing
            mine += [0.0] * (held - len(mine))
            out[h.key, node] = Share(sum(mine) / 100.0, sum(1 for u in mine if u < threshold))
        rest = [(h, n) for h, n in tasks if h not in by_owner]
        if not rest:
            continue
        allocated = sum(n for _, n in rest)
        if len(readable) < allocated:
            continue  # the agent reports fewer GPUs than are held: not measured
        top = sorted((g.utilization_pct or 0.0 for g in readable), reverse=True)[:allocated]
        mean = sum(top) / allocated / 100.0
        idle_fraction = sum(1 for u in top if u < threshold) / allocated
        for h, n in rest:
            out[h.key, node] = Share(mean * n, idle_fraction * n)
    return out


def lost_work(before: TaskFacts | None, now: TaskFacts, at: float) -> tuple[int, float]:
    """GPU-seconds a task lost in a transition: (column, amount), amount 0 for none.

    Work since the last checkpoint (or the start) is lost when a running task is preempted
    (at the preemption: a checkpoint saved in its grace counts) or stops on a fault or a
    failure (at the observation that shows it)."""
    if before is None or before.state != "running":
        return LOST_FAULT, 0.0
    since = max(t for t in (now.started_at, now.last_checkpoint, before.started_at, 0.0)
                if t is not None)  # fmt: skip
    if now.preemptions > before.preemptions and now.preempted_at is not None:
        return LOST_PREEMPTION, now.gpus * max(0.0, now.preempted_at - since)
    stopped = now.state == "failed" or (now.state == "requeued" and now.fault_requeue)
    if stopped:
        return LOST_FAULT, now.gpus * max(0.0, at - since)
    return LOST_FAULT, 0.0
