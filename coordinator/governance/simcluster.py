"""A simulated GPU cluster that the governance engine runs against, without Kubernetes.

Discrete events on a virtual clock: tasks arrive from a workload, run for their durations,
checkpoint every N seconds of progress, get preempted (losing the work since their last
checkpoint unless they save in their grace period) and are hit by node faults (a node goes
down for a repair time; its tasks lose the work since their last checkpoint and are
requeued by :func:`on_node_fault`). Nothing sleeps, so a simulated week takes seconds;
``advance(dt)`` steps it in real time for the demo. The same seed gives the same run.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from coordinator.governance.decisions import Admit, Fail, Preempt, Requeue
from coordinator.governance.engine import decide
from coordinator.governance.policy import Policy, PolicyChange, diff
from coordinator.governance.requeue import on_node_fault
from coordinator.governance.tasks import Capacity, GovernanceState, Task, TaskState
from coordinator.governance.workload import TaskSpec, Workload, WorkloadError


class _Order(IntEnum):
    # Events at the same instant: capacity changes first, then tasks ending, arrivals last.
    REPAIR = 0
    FAULT = 1
    COMPLETE = 2
    RELEASE = 3
    ARRIVAL = 4
    WAKE = 5


@dataclass(frozen=True, slots=True)
class _Arrival:
    spec: TaskSpec
    namespace: str


@dataclass(frozen=True, slots=True)
class _Complete:
    key: str
    epoch: int


@dataclass(frozen=True, slots=True)
class _Release:
    key: str
    epoch: int


@dataclass(frozen=True, slots=True)
class _Fault:
    node: str
    repair_s: float


@dataclass(frozen=True, slots=True)
class _Repair:
    node: str


@dataclass(frozen=True, slots=True)
class _Wake:
    """Only makes the engine look again (a backoff ended)."""


_Payload = _Arrival | _Complete | _Release | _Fault | _Repair | _Wake
_ORDER: dict[type, _Order] = {
    _Repair: _Order.REPAIR,
    _Fault: _Order.FAULT,
    _Complete: _Order.COMPLETE,
    _Release: _Order.RELEASE,
    _Arrival: _Order.ARRIVAL,
    _Wake: _Order.WAKE,
}


@dataclass(frozen=True)
class SimEvent:
    """Something that happened, for the demo's feed and the audit log."""

    time: float
    kind: str
    subject: str
    detail: str


@dataclass(frozen=True)
class NodeView:
    name: str
    gpus: int
    up: bool
    used: int
    back_at: float | None


@dataclass(slots=True)
class _Run:
    """The simulator's side of a task: how far its work has got."""

    spec: TaskSpec
    key: str
    team: str
    arrival: float
    progress: float = 0.0
    """Work done, in seconds, when the current run segment began (or when it stopped)."""
    segment_start: float | None = None
    epoch: int = 0
    first_start: float | None = None
    end: float | None = None
    outcome: str = ""

    def progress_at(self, now: float) -> float:
        if self.segment_start is None:
            return self.progress
        return self.progress + (now - self.segment_start)

    def saved_at(self, now: float) -> float:
        """Progress the last checkpoint holds, while running: checkpoints fall at every
        multiple of the interval of progress; the segment began from a saved state."""
        interval = self.spec.checkpoint_interval
        if interval is None or interval <= 0:
            return self.progress
        return max(self.progress, math.floor(self.progress_at(now) / interval) * interval)


@dataclass(frozen=True)
class ClassStats:
    priority_class: str
    tasks: int
    started: int
    finished: int
    mean_wait_s: float
    p95_wait_s: float
    """Wait: arrival to first start; a task never started counts its wait until the end."""


@dataclass(frozen=True)
class SimReport:
    horizon_s: float
    healthy_gpu_s: float
    running_gpu_s: float
    lost_fault_gpu_s: float
    lost_preempt_gpu_s: float
    arrived: int
    finished: int
    failed: int
    preemptions: int
    fault_requeues: int
    classes: tuple[ClassStats, ...]
    team_running_gpu_s: Mapping[str, float] = field(default_factory=dict)
    worst_gang_wait_s: float = 0.0
    """The longest wait (arrival to first start; until the end for one never started) of a
    gang (more than one pod) asking for no more than its team's quota."""

    @property
    def utilization(self) -> float:
        """GPU-seconds running tasks over GPU-seconds of healthy capacity."""
        return self.running_gpu_s / self.healthy_gpu_s if self.healthy_gpu_s else 0.0

    @property
    def goodput(self) -> float:
        """Like utilization, less the work thrown away by faults and preemptions."""
        kept = self.running_gpu_s - self.lost_fault_gpu_s - self.lost_preempt_gpu_s
        return kept / self.healthy_gpu_s if self.healthy_gpu_s else 0.0


class SimCluster:
    """The engine, a virtual clock and a cluster of nodes. Use :meth:`run_until` for
    batch runs and :meth:`advance` for real-time stepping."""

    def __init__(
        self,
        policy: Policy,
        workload: Workload,
        *,
        start: float = 0.0,
        on_event: Callable[[SimEvent], None] | None = None,
        on_round: Callable[[GovernanceState, float], None] | None = None,
    ) -> None:
        problems = workload.problems_with(policy)
        if problems:
            raise WorkloadError("<workload>", problems)
        self.policy = policy
        self.now = start
        self._on_event = on_event
        self._on_round = on_round
        """Called before each decision with the state and the time (benchmarks watch the
        queue with it)."""
        self._rng = random.Random(workload.seed)
        self._random_faults = workload.random_faults
        self._node_gpus = {
            name: workload.cluster.gpus_per_node for name in workload.cluster.node_names()
        }
        self._down_until: dict[str, float] = {}
        self.state = GovernanceState(Capacity.of_nodes(self._node_gpus))
        self._runs: dict[str, _Run] = {}
        self._done: list[_Run] = []
        self._heap: list[tuple[float, int, int, _Payload]] = []
        self._seq = 0
        self._running_gpus = 0
        self._team_running: dict[str, int] = {}
        self._stats = _Counters()
        namespace = {team.name: team.namespace for team in policy.teams}
        for spec in workload.expand():
            self._push(start + spec.arrival, _Arrival(spec, namespace[spec.team]))
        for fault in workload.faults:
            self._push(start + fault.at, _Fault(fault.node, fault.repair))
        if self._random_faults is not None:
            for node in self._node_gpus:
                self._schedule_random_fault(node, start)

    # -- driving -----------------------------------------------------------------------------

    def advance(self, dt: float) -> None:
        """Move the clock ``dt`` seconds on, handling every event on the way."""
        self.run_until(self.now + dt)

    def run_until(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            instant = self._heap[0][0]
            self._tick(instant)
            while self._heap and self._heap[0][0] == instant:
                self._handle(heapq.heappop(self._heap)[3])
            self._govern()
        self._tick(max(until, self.now))

    def set_policy(self, policy: Policy) -> list[PolicyChange]:
        """Live reload: the next decisions follow ``policy``; returns what changed."""
        changes = diff(self.policy, policy)
        self.policy = policy
        self._govern()
        return changes

    def fail_node(self, node: str, repair_s: float | None) -> None:
        """Take ``node`` down now, for ``repair_s`` seconds, or until :meth:`repair_node` when
        None (the coordinator decides when a node is back)."""
        if node not in self._node_gpus:
            raise KeyError(f"no node {node!r}")
        self._fault(node, repair_s)
        self._govern()

    def repair_node(self, node: str) -> None:
        """Bring ``node`` back now, before its repair time (the coordinator returned it)."""
        if node not in self._node_gpus:
            raise KeyError(f"no node {node!r}")
        self._repair(node)
        self._govern()

    def is_down(self, node: str) -> bool:
        return node in self._down_until

    # -- views -------------------------------------------------------------------------------

    def nodes(self) -> list[NodeView]:
        used: dict[str, int] = {}
        for task in self.state.tasks.values():
            for node, gpus in task.placement.items():
                used[node] = used.get(node, 0) + gpus
        return [
            NodeView(
                name,
                gpus,
                name not in self._down_until,
                used.get(name, 0),
                _finite(self._down_until.get(name)),
            )
            for name, gpus in self._node_gpus.items()
        ]

    def report(self) -> SimReport:
        runs = [*self._done, *self._runs.values()]
        quota = {team.name: team.quota.gpus for team in self.policy.teams}
        by_class: dict[str, list[_Run]] = {}
        for run in runs:
            by_class.setdefault(run.spec.priority_class or "", []).append(run)
        classes = tuple(
            _class_stats(name, group, self.now) for name, group in sorted(by_class.items())
        )
        counters = self._stats
        return SimReport(
            horizon_s=self.now,
            healthy_gpu_s=counters.healthy_gpu_s,
            running_gpu_s=counters.running_gpu_s,
            lost_fault_gpu_s=counters.lost_fault_gpu_s,
            lost_preempt_gpu_s=counters.lost_preempt_gpu_s,
            arrived=len(runs),
            finished=sum(1 for run in runs if run.outcome == "finished"),
            failed=sum(1 for run in runs if run.outcome == "failed"),
            preemptions=counters.preemptions,
            fault_requeues=counters.fault_requeues,
            classes=classes,
            team_running_gpu_s=dict(counters.team_running_gpu_s),
            worst_gang_wait_s=max(
                (
                    (run.first_start if run.first_start is not None else self.now) - run.arrival
                    for run in runs
                    if run.spec.size > 1 and run.spec.demand <= quota.get(run.team, 0)
                ),
                default=0.0,
            ),
        )

    # -- events ------------------------------------------------------------------------------

    def _push(self, at: float, payload: _Payload) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, int(_ORDER[type(payload)]), self._seq, payload))

    def _emit(self, kind: str, subject: str, detail: str) -> None:
        if self._on_event is not None:
            self._on_event(SimEvent(self.now, kind, subject, detail))

    def _tick(self, instant: float) -> None:
        """Account GPU-time from the clock's last reading to ``instant``."""
        elapsed = instant - self.now
        if elapsed > 0:
            counters = self._stats
            counters.healthy_gpu_s += self.state.capacity.healthy_gpus * elapsed
            counters.running_gpu_s += self._running_gpus * elapsed
            for team, gpus in self._team_running.items():
                counters.team_running_gpu_s[team] = (
                    counters.team_running_gpu_s.get(team, 0.0) + gpus * elapsed
                )
            self.now = instant

    def _handle(self, payload: _Payload) -> None:
        match payload:
            case _Arrival(spec, namespace):
                self._arrive(spec, namespace)
            case _Complete(key, epoch):
                self._complete(key, epoch)
            case _Release(key, epoch):
                self._release(key, epoch)
            case _Fault(node, repair_s):
                self._fault(node, repair_s)
            case _Repair(node):
                self._repair(node)
            case _Wake():
                pass

    def _arrive(self, spec: TaskSpec, namespace: str) -> None:
        name = spec.name or f"task-{self._seq}"
        task = Task(
            namespace=namespace,
            name=name,
            pod_gpus=(spec.gpus,) * spec.size,
            queued_at=self.now,
            priority_class=spec.priority_class,
            size=spec.size,
            max_requeues=spec.max_requeues,
            checkpoint_grace_s=spec.checkpoint_grace,
        )
        self.state.add(task)
        self._runs[task.key] = _Run(spec, task.key, spec.team, self.now)
        limit = self.policy.reservation.after_wait_seconds
        if limit is not None:
            # look again when it may have waited too long: capacity is held for it from then
            self._push(self.now + limit + 1, _Wake())
        self._emit("arrival", task.key, f"{spec.demand} GPUs, {spec.duration / 3600:.1f} h")

    def _complete(self, key: str, epoch: int) -> None:
        run = self._runs.get(key)
        if run is None or run.epoch != epoch:
            return  # stale: the task was stopped since this completion was scheduled
        self._stop_running(run)
        run.progress = run.spec.duration
        self.state.finish(key, self.now)
        self._retire(run, "finished")

    def _release(self, key: str, epoch: int) -> None:
        run = self._runs.get(key)
        if run is None or run.epoch != epoch:
            return
        if self.state.task(key).state is TaskState.PREEMPTED:
            self.state.release(key, self.now)
            self._emit("release", key, "preempted task's GPUs are free; back in the queue")

    def _fault(self, node: str, repair_s: float | None) -> None:
        if node in self._down_until:
            return
        self._down_until[node] = math.inf if repair_s is None else self.now + repair_s
        self._set_capacity()
        decisions = on_node_fault(self.state.tasks.values(), node, self.now, self.policy.requeue)
        how_long = "until repaired" if repair_s is None else f"for {repair_s / 3600:.1f} h"
        self._emit("fault", node, f"down {how_long}, {len(decisions)} task(s) hit")
        for decision in decisions:
            self._apply_fault_decision(decision)
        if repair_s is not None:
            self._push(self.now + repair_s, _Repair(node))

    def _repair(self, node: str) -> None:
        if self._down_until.pop(node, None) is None:
            return
        self._set_capacity()
        self._emit("repair", node, "back in service")
        if self._random_faults is not None:
            self._schedule_random_fault(node, self.now)

    def _schedule_random_fault(self, node: str, after: float) -> None:
        assert self._random_faults is not None
        at = after + self._rng.expovariate(1.0 / self._random_faults.mtbf)
        self._push(at, _Fault(node, self._random_faults.repair))

    def _set_capacity(self) -> None:
        healthy = {n: g for n, g in self._node_gpus.items() if n not in self._down_until}
        self.state.capacity = Capacity.of_nodes(healthy)

    # -- decisions ---------------------------------------------------------------------------

    def _govern(self) -> None:
        if not any(task.state.waiting for task in self.state.tasks.values()):
            return
        self._refresh_checkpoints()
        if self._on_round is not None:
            self._on_round(self.state, self.now)
        decisions = decide(self.state, self.policy, self.now)
        for preempt in decisions.preempt:
            self._apply(preempt)
        for admit in decisions.admit:
            self._apply(admit)

    def _refresh_checkpoints(self) -> None:
        """Tell the engine when each running task last checkpointed (victim choice)."""
        for run in self._runs.values():
            if run.segment_start is None or run.spec.checkpoint_interval is None:
                continue
            saved = run.saved_at(self.now)
            if saved > run.progress:
                self.state.tasks[run.key].last_checkpoint = run.segment_start + (
                    saved - run.progress
                )

    def _apply(self, decision: Admit | Preempt) -> None:
        self.state.apply(decision, self.now)
        if isinstance(decision, Admit):
            self._start(decision)
        else:
            self._preempted(decision)

    def _start(self, admit: Admit) -> None:
        run = self._runs[admit.task]
        self.state.start(admit.task, self.now)
        run.segment_start = self.now
        run.epoch += 1
        if run.first_start is None:
            run.first_start = self.now
        self._running_gpus += admit.gpus
        self._team_running[run.team] = self._team_running.get(run.team, 0) + admit.gpus
        remaining = max(0.0, run.spec.duration - run.progress)
        self._push(self.now + remaining, _Complete(admit.task, run.epoch))
        self._emit("admit", admit.task, admit.reason)

    def _preempted(self, preempt: Preempt) -> None:
        run = self._runs[preempt.victim]
        done = run.progress_at(self.now)
        kept = done if run.spec.checkpoint_on_preempt else run.saved_at(self.now)
        self._stats.lost_preempt_gpu_s += run.spec.demand * (done - kept)
        self._stats.preemptions += 1
        self._stop_running(run)
        run.progress = kept
        self._push(self.now + preempt.grace_s, _Release(preempt.victim, run.epoch))
        self._emit("preempt", preempt.victim, preempt.reason)

    def _apply_fault_decision(self, decision: Requeue | Fail) -> None:
        run = self._runs[decision.task]
        if run.segment_start is not None:
            done = run.progress_at(self.now)
            kept = run.saved_at(self.now)
            self._stats.lost_fault_gpu_s += run.spec.demand * (done - kept)
            self._stop_running(run)
            run.progress = kept
        else:
            run.epoch += 1  # a pending release of a preempted task no longer applies
        self.state.apply(decision, self.now)
        if isinstance(decision, Requeue):
            if decision.counted:
                self._stats.fault_requeues += 1
            if decision.backoff_until > self.now:
                self._push(decision.backoff_until, _Wake())
            self._emit("requeue", decision.task, decision.reason)
        else:
            self._retire(run, "failed")
            self._emit("fail", decision.task, decision.reason)

    def _stop_running(self, run: _Run) -> None:
        if run.segment_start is None:
            return
        run.progress = run.progress_at(self.now)
        run.segment_start = None
        run.epoch += 1
        self._running_gpus -= run.spec.demand
        self._team_running[run.team] -= run.spec.demand

    def _retire(self, run: _Run, outcome: str) -> None:
        run.outcome = outcome
        run.end = self.now
        self._done.append(self._runs.pop(run.key))
        self.state.remove(run.key)
        if outcome == "finished":
            self._emit("finish", run.key, "done")


@dataclass
class _Counters:
    healthy_gpu_s: float = 0.0
    running_gpu_s: float = 0.0
    lost_fault_gpu_s: float = 0.0
    lost_preempt_gpu_s: float = 0.0
    preemptions: int = 0
    fault_requeues: int = 0
    team_running_gpu_s: dict[str, float] = field(default_factory=dict)


def _class_stats(name: str, runs: list[_Run], now: float) -> ClassStats:
    waits = sorted(
        (run.first_start if run.first_start is not None else now) - run.arrival for run in runs
    )
    return ClassStats(
        priority_class=name,
        tasks=len(runs),
        started=sum(1 for run in runs if run.first_start is not None),
        finished=sum(1 for run in runs if run.outcome == "finished"),
        mean_wait_s=sum(waits) / len(waits) if waits else 0.0,
        p95_wait_s=_percentile(waits, 0.95),
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _finite(t: float | None) -> float | None:
    """A repair time, or None when there is none (down until repaired)."""
    return None if t is None or math.isinf(t) else t
