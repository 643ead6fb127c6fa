"""Tasks and their life cycle, free of Kubernetes types (the lead maps pods to them).

A task is one pod, or a gang of pods that share a task name and are admitted together.
Transitions (anything else raises :class:`InvalidTransitionError`)::

    pending / requeued  --Admit-->     admitted  --start-->  running  --finish-->  finished
    admitted / running  --Preempt-->   preempted --release-->  requeued   (pods gone)
    admitted / running / preempted  --Requeue (node fault)-->  requeued   (with backoff)
    preempted           --finish-->    finished   (it completed within its grace)
    any but finished / failed       --Fail-->  failed

A requeued task keeps its original ``queued_at``, so it returns to its place in the queue.

A task released after a preemption owes the GPUs it freed to its preemptor while that one
waits (DESIGN.md: the GPUs its victims free are its own, first). The claim is spent when the
preemptor is admitted and void when it fails, finishes or is removed; ``preempted_by``
stays, as the ping-pong guard (a task never preempts the task that preempted it while that
one runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from coordinator.governance.decisions import Admit, Decision, Fail, Preempt, Requeue


class TaskState(StrEnum):
    PENDING = "pending"
    ADMITTED = "admitted"
    RUNNING = "running"
    PREEMPTED = "preempted"
    REQUEUED = "requeued"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def waiting(self) -> bool:
        """In the queue, asking for admission."""
        return self in _WAITING

    @property
    def holding(self) -> bool:
        """Holds GPUs (a preempted task holds them until its pods are gone)."""
        return self in _HOLDING

    @property
    def done(self) -> bool:
        return self in _DONE


_WAITING = frozenset({TaskState.PENDING, TaskState.REQUEUED})
_HOLDING = frozenset({TaskState.ADMITTED, TaskState.RUNNING, TaskState.PREEMPTED})
_DONE = frozenset({TaskState.FINISHED, TaskState.FAILED})


class RequeueCause(StrEnum):
    PREEMPTION = "preemption"
    FAULT = "fault"


class InvalidTransitionError(RuntimeError):
    """A decision or event does not apply to the task's current state."""


def task_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


@dataclass(slots=True)
class Task:
    """One task and its history. Times are seconds on the caller's clock (epoch or virtual)."""

    namespace: str
    name: str
    pod_gpus: tuple[int, ...]
    """GPUs of each pod seen so far (a gang's launcher pod may ask for 0)."""
    queued_at: float
    """Arrival; kept across requeues so a requeued task keeps its place."""
    priority_class: str | None = None
    size: int = 1
    """Pods in the gang; the task is admitted only when all of them are known."""
    max_requeues: int | None = None
    """Per-task override of the policy's requeue.maxRequeues."""
    checkpoint_grace_s: float | None = None
    """Per-task override of the policy's preemption.defaultGraceSeconds."""
    state: TaskState = TaskState.PENDING
    admitted_at: float | None = None
    started_at: float | None = None
    last_checkpoint: float | None = None
    finished_at: float | None = None
    placement: Mapping[str, int] = field(default_factory=dict)
    """GPUs held per node, when known (the sim places; on Kubernetes the scheduler does)."""
    preempted_by: str | None = None
    preempted_at: float | None = None
    claim_spent: bool = False
    """Released after a preemption, its freed GPUs are no longer owed to ``preempted_by``:
    that task was admitted since, or is gone."""
    grace_until: float | None = None
    times_preempted: int = 0
    requeue_count: int = 0
    """Requeues caused by faults; past max requeues the task fails."""
    requeue_cause: RequeueCause | None = None
    backoff_until: float | None = None
    reason: str = ""
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = task_key(self.namespace, self.name)
        if self.size < 1:
            raise ValueError(f"task {self.key}: size must be at least 1, got {self.size}")
        if any(gpus < 0 for gpus in self.pod_gpus):
            raise ValueError(f"task {self.key}: a pod cannot ask for negative GPUs")

    @property
    def gpus(self) -> int:
        """Demand: the sum over the gang's pods."""
        return sum(self.pod_gpus)

    @property
    def complete(self) -> bool:
        """All pods of the gang are known (all-or-nothing admission waits for them)."""
        return len(self.pod_gpus) >= self.size

    def work_at_risk(self, now: float) -> float:
        """GPU-seconds lost if the task stopped now: GPUs x time since the last checkpoint,
        or since start when none is known. Zero when it is not running."""
        if self.state is not TaskState.RUNNING or self.started_at is None:
            return 0.0
        since = self.started_at
        if self.last_checkpoint is not None and self.last_checkpoint > since:
            since = self.last_checkpoint
        return float(self.gpus * max(0.0, now - since))


@dataclass(frozen=True)
class Capacity:
    """Healthy GPUs the engine may hand out: a count, or per node (nodes that are unhealthy
    or pending recovery are left out by the caller)."""

    healthy_gpus: int
    by_node: Mapping[str, int] | None = None

    @classmethod
    def of_nodes(cls, by_node: Mapping[str, int]) -> Capacity:
        return cls(sum(by_node.values()), dict(by_node))

    @classmethod
    def of_count(cls, gpus: int) -> Capacity:
        return cls(gpus, None)


@dataclass
class GovernanceState:
    """The tasks and the healthy capacity: the engine's whole input besides the policy.

    The engine only reads it; callers move tasks through their states with :meth:`apply`
    (decisions) and the event methods (start, checkpoint, release, finish, fail).
    """

    capacity: Capacity
    tasks: dict[str, Task] = field(default_factory=dict)
    _owed: dict[str, set[str]] = field(default_factory=dict, repr=False)
    """Preemptor -> the released victims whose freed GPUs it has a claim on."""

    def add(self, task: Task) -> None:
        if task.key in self.tasks:
            raise ValueError(f"task {task.key} is already known")
        self.tasks[task.key] = task

    def task(self, key: str) -> Task:
        try:
            return self.tasks[key]
        except KeyError:
            raise KeyError(f"no task {key!r}") from None

    def remove(self, key: str) -> Task:
        task = self.tasks.pop(key)
        self._end_claims(task)
        return task

    def apply(self, decision: Decision, now: float) -> None:
        match decision:
            case Admit():
                self._admit(decision, now)
            case Preempt():
                self._preempt(decision, now)
            case Requeue():
                self._requeue(decision)
            case Fail():
                self._fail(self.task(decision.task), now, decision.reason)

    def apply_all(self, decisions: Iterable[Decision], now: float) -> None:
        for decision in decisions:
            self.apply(decision, now)

    def _admit(self, decision: Admit, now: float) -> None:
        task = self.task(decision.task)
        _expect(task, _WAITING, "admit")
        self._end_claims(task)  # spent: the GPUs it was owed are its own now
        task.state = TaskState.ADMITTED
        task.admitted_at = now
        task.started_at = None
        task.last_checkpoint = None
        task.placement = dict(decision.nodes) if decision.nodes is not None else {}
        task.backoff_until = None
        task.grace_until = None
        task.reason = decision.reason

    def _preempt(self, decision: Preempt, now: float) -> None:
        victim = self.task(decision.victim)
        _expect(victim, {TaskState.ADMITTED, TaskState.RUNNING}, "preempt")
        victim.state = TaskState.PREEMPTED
        victim.preempted_by = decision.preemptor
        victim.preempted_at = now
        victim.grace_until = now + decision.grace_s
        victim.times_preempted += 1
        victim.reason = decision.reason

    def _requeue(self, decision: Requeue) -> None:
        task = self.task(decision.task)
        _expect(task, _HOLDING, "requeue")
        task.state = TaskState.REQUEUED
        if decision.counted:
            task.requeue_count += 1
            task.requeue_cause = RequeueCause.FAULT
        else:
            task.requeue_cause = RequeueCause.PREEMPTION
        task.backoff_until = decision.backoff_until
        task.placement = {}
        task.grace_until = None
        task.reason = decision.reason

    def start(self, key: str, now: float) -> None:
        """The task's pods run (the lead saw them Running; the sim started them)."""
        task = self.task(key)
        _expect(task, {TaskState.ADMITTED}, "start")
        task.state = TaskState.RUNNING
        task.started_at = now

    def checkpoint(self, key: str, at: float) -> None:
        task = self.task(key)
        _expect(task, {TaskState.RUNNING, TaskState.PREEMPTED}, "checkpoint")
        task.last_checkpoint = at

    def place(self, key: str, nodes: Mapping[str, int]) -> None:
        """Where the scheduler put the task's pods (Kubernetes), GPUs per node."""
        task = self.task(key)
        _expect(task, _HOLDING, "place")
        task.placement = dict(nodes)

    def release(self, key: str, now: float) -> None:
        """A preempted task's pods are gone: it frees its GPUs and queues again at its place,
        without backoff and without using a requeue (preemption is not the task's fault)."""
        task = self.task(key)
        _expect(task, {TaskState.PREEMPTED}, "release")
        task.state = TaskState.REQUEUED
        task.requeue_cause = RequeueCause.PREEMPTION
        task.placement = {}
        task.grace_until = None
        task.backoff_until = None
        task.reason = f"released at {now:.0f} after preemption by {task.preempted_by}"
        task.claim_spent = False
        preemptor = self.tasks.get(task.preempted_by or "")
        if preemptor is not None and preemptor.state.waiting:
            self._owed.setdefault(preemptor.key, set()).add(task.key)
        else:
            task.claim_spent = True  # its preemptor runs already, or is gone

    def finish(self, key: str, now: float) -> None:
        task = self.task(key)
        _expect(task, {TaskState.RUNNING, TaskState.PREEMPTED}, "finish")
        task.state = TaskState.FINISHED
        task.finished_at = now
        task.placement = {}
        self._end_claims(task)

    def fail(self, key: str, now: float, reason: str) -> None:
        """The application failed on its own (not a fault the coordinator requeues)."""
        self._fail(self.task(key), now, reason)

    def _fail(self, task: Task, now: float, reason: str) -> None:
        if task.state.done:
            raise InvalidTransitionError(f"cannot fail task {task.key}: it is {task.state}")
        task.state = TaskState.FAILED
        task.finished_at = now
        task.placement = {}
        task.reason = reason
        self._end_claims(task)

    def _end_claims(self, task: Task) -> None:
        """``task`` was admitted or left: what was owed to it is not any more (spent, or
        void), and it is owed nothing as a victim either."""
        for key in self._owed.pop(task.key, ()):
            victim = self.tasks.get(key)
            if victim is not None:
                victim.claim_spent = True
        if task.preempted_by is not None:
            self._owed.get(task.preempted_by, set()).discard(task.key)


def _expect(task: Task, allowed: Iterable[TaskState], action: str) -> None:
    if task.state not in allowed:
        raise InvalidTransitionError(f"cannot {action} task {task.key}: it is {task.state}")
