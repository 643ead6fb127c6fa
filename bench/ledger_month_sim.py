"""The simulated month behind ``bench/ledger_month.py``: a cluster of nodes, teams and tasks
advanced from event to event (arrivals, starts, checkpoints, preemptions, node faults and
repairs, silences), from which each observation's holdings, task facts and the agents'
readings are read. The system boundary only: the ledger fed from it is the real one.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from coordinator.ledger.accrue import GpuReading, NodeReading
from coordinator.ledger.observe import Holding, Observation, TaskFacts

DAY = 86400.0
START = 1_772_409_600.0  # Monday 2026-03-02 00:00 UTC
GPUS = 8
TYPES = ("p5.48xlarge", "p4d.24xlarge", "p5e.48xlarge")
REPORT_EVERY_S = 10.0  # the agents' state interval
PRIORITIES = ("low", "mid", "high")
LOG_SHORTEST, LOG_SPAN = math.log(600), math.log(2 * DAY / 600)
"""Work: 10 minutes to 2 days, skewed long (median 14 h, mean 17.5 h): about 80 % allocated."""
SIZES = ((0.30, (1, 1)), (0.50, (2, 1)), (0.70, (4, 1)), (0.92, (8, 1)), (1.0, (8, 2)))
"""Cumulative share of tasks, (GPUs per node, nodes): the last, gangs of 2-4 whole nodes."""


# --- the workload ------------------------------------------------------------------------------


@dataclass(eq=False)
class Run:
    """One task, across its requeues: what governance knows of it, and the sim's own."""

    key: tuple[str, float]
    team: str
    priority_class: str
    per_node: int
    """GPUs per node: 1, 2, 4 or 8."""
    nodes: int
    """1, or 2-4 for a gang of whole nodes."""
    work_s: float
    util: float
    checkpoint_s: float | None
    preempt_at: float | None
    """Fraction of its work at which it is preempted (once), if it is."""
    fail_at: float | None
    state: str = "pending"
    admitted_at: float | None = None
    started_at: float | None = None
    last_checkpoint: float | None = None
    preempted_at: float | None = None
    finished_at: float | None = None
    fault_requeue: bool = False
    preemptions: int = 0
    requeues: int = 0
    saved_s: float = 0.0
    """Work kept by the last checkpoint."""
    placement: tuple[tuple[int, int], ...] = ()
    """(node index, GPUs) while holding."""
    epoch: int = 0
    """Bumped whenever it stops: events scheduled for an earlier run are void."""
    facts: TaskFacts | None = None
    holding: Holding | None = None
    pods: dict[int, frozenset[str]] = field(default_factory=dict)

    @property
    def gpus(self) -> int:
        return self.per_node * self.nodes

    @property
    def holds(self) -> bool:
        return self.state in ("admitted", "running", "preempted")


ARRIVE, START_RUN, CHECKPOINT, END, PREEMPT, RELEASE, FAIL, FAULT, REPAIR = range(9)


class Month:
    """The simulated cluster: an event heap advanced to each observation's instant."""

    def __init__(self, nodes: int, teams: int, tasks: int, days: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.end = START + days * DAY
        self.names = [f"gpu-node-{i:05d}" for i in range(nodes)]
        self.types = {n: TYPES[i % len(TYPES)] for i, n in enumerate(self.names)}
        self.free = [GPUS] * nodes
        self.down: set[int] = set()
        self.on_node: list[dict[Run, int]] = [{} for _ in range(nodes)]
        self.healthy: dict[str, int] = dict.fromkeys(self.names, GPUS)
        self.phase = [rng.uniform(0, REPORT_EVERY_S) for _ in range(nodes)]
        self.silent: list[list[tuple[float, float]]] = []
        for _ in range(nodes):
            windows = []
            for _ in range(rng.choice((1, 2))):
                begin = rng.uniform(START, self.end - 1800)
                windows.append((begin, begin + rng.uniform(300, 1800)))
            self.silent.append(windows)
        # teams: demand skewed (a few big teams), guarantees flatter, so some borrow
        self.team_names = [f"team-{i:02d}" for i in range(teams)]
        demand = [1 / (i + 1) ** 0.7 for i in range(teams)]
        weights = [1 / (i + 1) ** 0.35 for i in range(teams)]
        self.guarantee = {t: int(nodes * GPUS * w / sum(weights))
                          for t, w in zip(self.team_names, weights, strict=True)}  # fmt: skip
        self.now = START
        self.heap: list[tuple[float, int, int, Run | int, int]] = []
        self.seq = 0
        self.waiting: list[Run] = []
        self.active: dict[tuple[str, float], Run] = {}
        self.gone: list[TaskFacts] = []
        self.count = {"arrived": 0, "admitted": 0, "preempted": 0, "fault_requeued": 0,
                      "failed": 0, "finished": 0, "faults": 0}  # fmt: skip
        self.held_gpu_s = 0.0
        cumulative = list(itertools.accumulate(demand))
        arrivals = sorted(rng.uniform(START, self.end) for _ in range(tasks))
        for n, at in enumerate(arrivals):
            team = rng.choices(self.team_names, cum_weights=cumulative)[0]
            r = rng.random()
            per_node, gang = next(size for bound, size in SIZES if r < bound)
            if gang > 1:
                gang = rng.randint(2, 4)
            run = Run(
                key=(f"{team}/task-{n:06d}", at), team=team,
                priority_class=rng.choice(PRIORITIES), per_node=per_node, nodes=gang,
                work_s=math.exp(LOG_SHORTEST + LOG_SPAN * rng.random() ** 0.35),
                util=rng.choice((0.0, 3.0)) if rng.random() < 0.25 else rng.uniform(20, 100),
                checkpoint_s=rng.uniform(1800, 7200) if rng.random() < 0.7 else None,
                preempt_at=rng.uniform(0.05, 0.95) if rng.random() < 0.06 else None,
                fail_at=rng.uniform(0.0, 1.0) if rng.random() < 0.02 else None,
            )  # fmt: skip
            self._push(at, ARRIVE, run)
        for _ in range(max(1, round(nodes * 0.15 * days / 30))):  # 0.15 faults per node-month
            self._push(rng.uniform(START, self.end), FAULT, rng.randrange(nodes))

    def _push(self, at: float, kind: int, what: Run | int, epoch: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, what, epoch))

    # -- the agents' readings: the system boundary

    def heard(self, i: int) -> float:
        """When node ``i``'s agent last reported: every 10 s, except while it is silent."""
        t = self.now
        for begin, end in self.silent[i]:
            if begin <= t < end:
                t = begin
                break
        return t - (t - self.phase[i]) % REPORT_EVERY_S

    def reading(self, node: str) -> NodeReading | None:
        i = int(node[-5:])
        gpus = [GpuReading(run.util, run.pods[i]) for run, n in self.on_node[i].items()
                for _ in range(n)]  # fmt: skip
        gpus += [GpuReading(0.0) for _ in range(GPUS - len(gpus))]
        return NodeReading(self.heard(i), tuple(gpus))

    # -- what governance holds, as the ledger reads it

    def observation(self) -> Observation:
        holding = [r for r in self.active.values() if r.holds]
        held: dict[str, int] = dict.fromkeys(self.team_names, 0)
        for r in holding:
            held[r.team] += r.gpus
        borrowed_left = {t: max(0, held[t] - self.guarantee[t]) for t in self.team_names}
        lendable = sum(borrowed_left.values())
        lent: dict[str, int] = {}
        for t in self.team_names:
            spare = self.guarantee[t] - held[t]
            if lendable and spare > 0:
                lent[t] = min(spare, lendable)
                lendable -= lent[t]
        holding.sort(key=lambda r: (-(r.admitted_at or 0.0), r.key))
        holdings = []
        for r in holding:
            borrowed = min(r.gpus, borrowed_left[r.team])
            borrowed_left[r.team] -= borrowed
            if r.holding is None or r.holding.borrowed != borrowed:
                r.holding = Holding(
                    key=r.key, team=r.team, gpus=r.gpus, borrowed=borrowed,
                    placement=tuple(sorted((self.names[i], n) for i, n in r.placement)),
                    owners=frozenset().union(*r.pods.values()),
                )  # fmt: skip
            holdings.append(r.holding)
        facts = [r.facts for r in self.active.values() if r.facts is not None]
        facts += self.gone
        self.gone = []
        return Observation(self.now, tuple(holdings), lent, self.healthy, tuple(facts))

    def _facts(self, run: Run, *, gone: bool = False) -> None:
        run.facts = TaskFacts(
            key=run.key, team=run.team, priority_class=run.priority_class, gpus=run.gpus,
            state=run.state, admitted_at=run.admitted_at, started_at=run.started_at,
            last_checkpoint=run.last_checkpoint, preempted_at=run.preempted_at,
            fault_requeue=run.fault_requeue, preemptions=run.preemptions,
            requeues=run.requeues, finished_at=run.finished_at, gone=gone,
        )  # fmt: skip
        if gone:
            self.gone.append(run.facts)
            del self.active[run.key]

    # -- the simulation

    def advance(self, until: float) -> None:
        """Every event up to ``until`` (inclusive), then admit what fits."""
        changed = False
        while self.heap and self.heap[0][0] <= until:
            at, _, kind, what, epoch = heapq.heappop(self.heap)
            self.now = at
            if isinstance(what, int):
                changed |= self._node_event(kind, what)
            elif epoch == what.epoch:
                changed |= self._task_event(kind, what)
            if changed:
                self._admit()
                changed = False
        self.now = until

    def _node_event(self, kind: int, i: int) -> bool:
        if kind == FAULT:
            if i in self.down:
                return False
            self.count["faults"] += 1
            for run in list(self.on_node[i]):
                self._stop(run)
                run.state, run.fault_requeue = "requeued", True
                run.requeues += 1
                self.count["fault_requeued"] += 1
                self._facts(run)
                self._queue(run)
            self.down.add(i)
            self.free[i] = 0
            self.healthy = {n: g for n, g in self.healthy.items() if n != self.names[i]}
            self._push(self.now + self.rng.uniform(3600, 8 * 3600), REPAIR, i)
            return False
        self.down.discard(i)
        self.free[i] = GPUS
        self.healthy = {**self.healthy, self.names[i]: GPUS}
        return True

    def _task_event(self, kind: int, run: Run) -> bool:
        now = self.now
        if kind == ARRIVE:
            self.count["arrived"] += 1
            self.active[run.key] = run
            self._queue(run)
            return True
        if kind == START_RUN:
            run.state, run.started_at = "running", now
            left = run.work_s - run.saved_s
            self._push(now + left, END, run, run.epoch)
            if run.checkpoint_s is not None:
                at = now + run.checkpoint_s
                if at < now + left:
                    self._push(at, CHECKPOINT, run, run.epoch)
            for frac, what in ((run.preempt_at, PREEMPT), (run.fail_at, FAIL)):
                if frac is not None and run.saved_s < frac * run.work_s:
                    self._push(now + frac * run.work_s - run.saved_s, what, run, run.epoch)
            self._facts(run)
            return False
        if kind == CHECKPOINT:
            assert run.started_at is not None and run.checkpoint_s is not None
            run.saved_s += now - max(run.started_at, run.last_checkpoint or 0.0)
            run.last_checkpoint = now
            self._push(now + run.checkpoint_s, CHECKPOINT, run, run.epoch)
            self._facts(run)
            return False
        if kind == PREEMPT:
            run.state, run.preempted_at = "preempted", now
            run.preemptions += 1
            run.preempt_at = None
            run.epoch += 1  # its end and checkpoints are void; the release is its own
            self._push(now + self.rng.uniform(30, 120), RELEASE, run, run.epoch)
            self.count["preempted"] += 1
            self._facts(run)
            return False
        if kind == RELEASE:
            self._stop(run)
            run.state, run.fault_requeue = "requeued", False
            self._facts(run)
            self._queue(run)
            return True
        # END or FAIL
        self._stop(run)
        run.state = "finished" if kind == END else "failed"
        run.finished_at = now
        self.count[run.state] += 1
        self._facts(run, gone=True)
        return True

    def _stop(self, run: Run) -> None:
        """It leaves its GPUs: what it held is freed, its pending events void."""
        for i, n in run.placement:
            del self.on_node[i][run]
            if i not in self.down:
                self.free[i] += n
        if run.admitted_at is not None:
            self.held_gpu_s += run.gpus * (self.now - run.admitted_at)
        run.placement, run.pods, run.holding = (), {}, None
        run.epoch += 1

    def _queue(self, run: Run) -> None:
        run.placement = ()
        run.state = run.state if run.state == "requeued" else "pending"
        # requeued tasks keep their place: the queue is in arrival order
        lo, hi = 0, len(self.waiting)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.waiting[mid].key[1] <= run.key[1]:
                lo = mid + 1
            else:
                hi = mid
        self.waiting.insert(lo, run)

    def _admit(self) -> None:
        """First fit, in queue order; a task that does not fit waits, the next may go."""
        if not self.waiting:
            return
        free = self.free
        most = max(free)
        whole = free.count(GPUS)
        kept = []
        for run in self.waiting:
            place: list[tuple[int, int]] | None = None
            if run.nodes == 1 and run.per_node <= most:
                i = next(i for i, f in enumerate(free) if f >= run.per_node)
                place = [(i, run.per_node)]
            elif run.nodes > 1 and whole >= run.nodes:
                place = []
                for i, f in enumerate(free):
                    if f == GPUS:
                        place.append((i, GPUS))
                        if len(place) == run.nodes:
                            break
            if place is None:
                kept.append(run)
                continue
            for i, n in place:
                free[i] -= n
                self.on_node[i][run] = n
                run.pods[i] = frozenset({f"pod:{run.key[0]}-{len(run.pods)}"})
            run.placement = tuple(place)
            run.state, run.admitted_at, run.holding = "admitted", self.now, None
            run.started_at = run.last_checkpoint = None
            self.count["admitted"] += 1
            self._facts(run)
            self._push(self.now + self.rng.uniform(20, 90), START_RUN, run, run.epoch)
            most = max(free)
            whole = free.count(GPUS)
        self.waiting = kept
