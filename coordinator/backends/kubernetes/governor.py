"""Task governance on Kubernetes: pods become tasks, the engine's decisions become API calls.

The governor lists and watches the pods that carry the ``gpuwarden.io/task`` label, groups
them into tasks (:mod:`coordinator.pods`), keeps the engine's :class:`GovernanceState` in
step with what the pods show, asks :func:`~coordinator.governance.decide` what to admit and
preempt, and carries the decisions out:

* **admit**: remove the ``gpuwarden.io/admission`` gate from every pod of the task (the
  engine admits a gang only once all its pods exist; a gate that fails to come off is
  retried, and a replacement pod of an admitted task is admitted too);
* **preempt**: evict the victim's pods through the Eviction API with the victim's checkpoint
  grace as grace period (a PodDisruptionBudget refusal is retried with backoff); the
  victim's GPUs count as taken until its pods are gone, and only then is the preemptor
  admitted;
* **node fault** (:meth:`KubeGovernor.on_node_out`): every task with a pod on the node is
  requeued (or failed past its max requeues) and its pods evicted; a pod on the node still
  there after its grace plus ``terminating_timeout_s`` is force-deleted, since a dead kubelet
  never confirms the deletion.

Pods come back. After an eviction the task's owner (a Job, a JobSet, an operator) creates
new pods, gated again; they carry the same task label, so they join the task the coordinator
remembers (same namespace and task name) and keep its place in the queue, its requeue count
and its backoff. The governor writes that memory on the new pods as annotations
(:data:`~coordinator.pods.QUEUED_AT_ANNOTATION` and friends), so a restarted or newly elected
coordinator reads it back.

A task whose pods never come back waits ``pods_return_s`` (counted from the end of its
backoff) and is then dropped, with an audit entry; a task whose pods all ended or were deleted
outside gpuwarden goes back to the queue the same way (without using a requeue), which is how
a replacement of a crashed pod is admitted again. A failed task is remembered while it has
pods, and pods its owner creates for it stay gated, with a warning Event, so a failed task is
not quietly run again under the same name.

Every decision is audited with its reason (kind ``decision``), and every API call is audited
before and after (``action_started`` / ``action_finished``), with the task and team as
subject. No entry names a node: the remediator rebuilds node lifecycles from the decisions
that do.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Container,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry

from coordinator.actuators import ActionResult
from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.backends.kubernetes.contract import EventReason, EventType
from coordinator.backends.kubernetes.governor_metrics import GovernanceMetrics
from coordinator.backends.kubernetes.pod_api import EvictOutcome, EvictResult
from coordinator.governance.decisions import Admit, Fail, Preempt, Requeue
from coordinator.governance.engine import decide
from coordinator.governance.grace import read_grace
from coordinator.governance.policy import Policy
from coordinator.governance.requeue import on_admission_timeout, on_node_fault
from coordinator.governance.tasks import (
    Capacity,
    GovernanceState,
    RequeueCause,
    Task,
    TaskState,
)
from coordinator.ledger.sources import GovernanceView
from coordinator.pods import (
    ADMISSION_GATE,
    BACKOFF_UNTIL_ANNOTATION,
    PREEMPTIONS_ANNOTATION,
    QUEUED_AT_ANNOTATION,
    REQUEUES_ANNOTATION,
    ObjectRef,
    PodInfo,
    TaskPods,
    format_time,
    group_by_task,
    outside_governance,
)
from coordinator.task_governance import (
    Json,
    classes_json,
    outside_json,
    tasks_json,
    teams_json,
    unassigned_json,
)
from gpuwarden_common.aio import raise_if_cancelled, run_together, wait_event

log = structlog.get_logger("coordinator.governance")

PodKey = tuple[str, str]


class PodOperations(Protocol):
    """What the governor needs from the API server
    (:class:`~coordinator.backends.kubernetes.pod_api.KubePods`)."""

    async def list_pods(
        self, label_selector: str | None = None, namespace: str | None = None
    ) -> tuple[list[PodInfo], str]: ...

    def watch_pods(
        self,
        resource_version: str,
        known: Iterable[PodInfo] = (),
        *,
        label_selector: str | None = None,
        namespace: str | None = None,
    ) -> AsyncIterator[tuple[str, PodInfo]]: ...

    async def remove_scheduling_gate(
        self, namespace: str, name: str, gate: str = ADMISSION_GATE
    ) -> ActionResult: ...

    async def evict(self, namespace: str, name: str, grace_seconds: int) -> EvictResult: ...

    async def force_delete(self, namespace: str, name: str) -> ActionResult: ...

    async def annotate(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> ActionResult: ...

    async def record_event(
        self,
        involved: ObjectRef,
        reason: EventReason,
        message: str,
        event_type: EventType = EventType.NORMAL,
    ) -> ActionResult: ...


@dataclass(frozen=True)
class GovernorSettings:
    actor: str
    """Who acts, in the audit log: the coordinator's identity."""
    dry_run: bool = False
    """Decide and audit, call nothing that changes a pod."""
    interval_s: float = 2.0
    """A decision round at least this often (pod changes wake it sooner): backoffs end and
    retries fall due on this beat."""
    settle_s: float = 0.1
    """After a wake-up, wait this long so a burst of pod changes makes one round."""
    pods_return_s: float = 600.0
    """How long a waiting task without pods is kept for its owner to recreate them."""
    terminating_timeout_s: float = 30.0
    """Beyond its grace, how long a pod on a failed node may stay terminating before it is
    force-deleted (its kubelet is presumed gone)."""
    retry_base_s: float = 2.0
    retry_max_s: float = 60.0
    max_parallel_calls: int = 8
    restart_s: float = 5.0
    """Pause before listing again after the pod watch failed."""


@dataclass
class _Removal:
    """A pod the governor wants gone (preemption, node fault, failed task)."""

    pod: PodInfo
    task: str
    grace_s: int
    cause: str
    force_at: float | None = None
    """Only for pods on a failed node: force-deleted if still there at this time."""
    evicted: bool = False


@dataclass
class _Memo:
    """The governor's notes on a task beyond the engine's :class:`Task`."""

    empty_since: float | None = None
    admission_reason: str = ""
    warned: set[str] = field(default_factory=set)
    """Pods (by uid) already told that their task failed."""
    grace_told: set[str] = field(default_factory=set)
    """Pods (by uid) already told that their checkpoint grace was capped or refused."""


@dataclass(frozen=True)
class _Event:
    pod: PodInfo
    reason: EventReason
    message: str
    event_type: EventType


class _Backoff:
    """Per (pod, operation) retry times: a call that failed waits, doubling, before the next."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._next: dict[tuple[PodKey, str], tuple[float, int]] = {}

    def due(self, pod: PodKey, operation: str, now: float) -> bool:
        entry = self._next.get((pod, operation))
        return entry is None or now >= entry[0]

    def failed(self, pod: PodKey, operation: str, now: float) -> None:
        _, attempts = self._next.get((pod, operation), (0.0, 0))
        delay = min(self._max_s, self._base_s * 2.0**attempts)
        self._next[(pod, operation)] = (now + delay, attempts + 1)

    def succeeded(self, pod: PodKey, operation: str) -> None:
        self._next.pop((pod, operation), None)

    def keep_only(self, pods: Container[PodKey]) -> None:
        for key in [k for k in self._next if k[0] not in pods]:
            del self._next[key]


class KubeGovernor:
    """The :class:`~coordinator.task_governance.TaskGovernance` of a Kubernetes cluster."""

    def __init__(
        self,
        pods: PodOperations,
        policy: Policy,
        audit: AuditLog,
        settings: GovernorSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.settings = settings
        self.state = GovernanceState(Capacity.of_nodes({}))
        self._healthy: dict[str, int] = {}
        """Healthy GPUs per node as the coordinator's model says; the engine gets them less
        the GPUs of pods outside governance."""
        self._outside = outside_governance((), ())
        self._api = pods
        self._audit = audit
        self._clock = clock
        self._pods: dict[PodKey, PodInfo] = {}
        self._removals: dict[PodKey, _Removal] = {}
        self._memos: dict[str, _Memo] = {}
        self._outbox: list[_Event] = []
        self._backoff = _Backoff(settings.retry_base_s, settings.retry_max_s)
        self._wake = asyncio.Event()
        self._metrics = GovernanceMetrics(registry, self._snapshot)

    # --- TaskGovernance -----------------------------------------------------------------------

    def teams(self) -> list[Json]:
        rows = teams_json(self.state, self.policy, {})
        if self._outside.gpus:
            rows.append(outside_json(self._outside))
        return rows

    def unassigned(self) -> Json:
        return unassigned_json(self.state, self.policy)

    def tasks(self) -> list[Json]:
        return tasks_json(self.state, self.policy, self._clock())

    def priority_classes(self) -> list[Json]:
        return classes_json(self.state, self.policy, self._clock())

    def accounting_view(self) -> GovernanceView:
        """For the usage ledger: the tasks, and the UIDs of their pods (the owners an agent
        with attribution reports on each GPU)."""
        owners: dict[str, set[str]] = {}
        for pod in self._pods.values():
            if pod.task is not None:
                owners.setdefault(f"{pod.namespace}/{pod.task}", set()).add(f"pod:{pod.uid}")
        return GovernanceView(self.state, self.policy, self._clock(),
                              {key: frozenset(uids) for key, uids in owners.items()})

    def set_capacity(self, healthy_gpus_by_node: dict[str, int]) -> None:
        if self._healthy == healthy_gpus_by_node:
            return  # told often (every model refresh); only a change is worth a round
        self._healthy = dict(healthy_gpus_by_node)
        self._hand_out()
        self._wake.set()

    def _hand_out(self) -> None:
        """The capacity the engine hands out: the healthy GPUs less those of pods outside
        governance (a notebook, a pod without the task label, still takes its GPUs)."""
        outside = self._outside.by_node
        self.state.capacity = Capacity.of_nodes(
            {node: max(0, gpus - outside.get(node, 0)) for node, gpus in self._healthy.items()}
        )

    def set_policy(self, policy: Policy) -> None:
        """Live reload: the next round follows ``policy``. Running tasks are not preempted for
        a smaller quota alone; a team now beyond its guarantee counts as borrowing."""
        self.policy = policy
        self._wake.set()

    async def on_node_out(self, node: str, reason: str) -> None:
        """Requeue (or fail) every task holding GPUs on ``node`` and remove its pods. Decided
        and audited here; the pods are evicted by the running rounds."""
        now = self._clock()
        views = group_by_task(self._pods.values())
        hit: list[Task] = []
        for key, task in self.state.tasks.items():
            view = views.get(key)
            if not task.state.holding or view is None:
                continue
            on_node = view.on_node(node)
            if not on_node:
                continue
            if node not in task.placement:
                # the scheduler's placement as far as it is known; the engine keys on it
                self.state.place(key, _scheduled(view.occupying))
            hit.append(task)
        records: list[AuditEntry] = []
        for decision in on_node_fault(hit, node, now, self.policy.requeue):
            task = self.state.task(decision.task)
            self.state.apply(decision, now)
            self._count(decision, task)
            records.append(self._fault_entry(decision, task, node, reason))
            self._remove_after_fault(decision, task, views[task.key], node, now)
        await self._record(records)
        self._wake.set()

    async def run(self) -> None:
        """List, watch and decide until cancelled; a failure lists again after a pause."""
        while True:
            raise_if_cancelled()
            try:
                await self._govern()
            except Exception:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # stopping: the stop may surface as another error
                log.exception("governance.failed", restart_in_s=self.settings.restart_s)
                await asyncio.sleep(self.settings.restart_s)

    # --- the loop -----------------------------------------------------------------------------

    async def _govern(self) -> None:
        # Every pod, not only those with the task label: GPU pods outside governance take
        # GPUs too. Only those and the governed ones are kept.
        listed, version = await self._api.list_pods()
        self._pods = {pod.key: pod for pod in listed if _kept(pod)}
        log.info("governance.listed", pods=len(listed), resource_version=version)
        # not a TaskGroup: on Python 3.11 a failed child leaves this task looking cancelled,
        # and run() would take a watch that ended for a request to stop (gpuwarden_common.aio)
        await run_together(self._follow(version, listed), self._rounds())

    async def _follow(self, version: str, known: list[PodInfo]) -> None:
        stream = self._api.watch_pods(version, known)
        try:
            async for change, pod in stream:
                if change == "DELETED" or not _kept(pod):
                    current = self._pods.get(pod.key)
                    if current is not None and current.uid == pod.uid:
                        del self._pods[pod.key]
                else:
                    self._pods[pod.key] = pod
                self._wake.set()
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # close the watch connection now, not at garbage collection
                await aclose()
        raise RuntimeError("the pod watch ended")

    async def _rounds(self) -> None:
        while True:
            raise_if_cancelled()
            self._wake.clear()
            await self.step()
            # a cancel must never be lost (gpuwarden_common.aio)
            await wait_event(self._wake, self.settings.interval_s)
            await asyncio.sleep(self.settings.settle_s)

    async def step(self) -> None:
        """One round: follow the pods, decide, record, act."""
        now = self._clock()
        records: list[AuditEntry] = []
        self._watch_outside()
        views = group_by_task(self._pods.values())
        for key in sorted(views.keys() | self.state.tasks.keys()):
            try:
                self._observe(key, views.get(key), now, records)
            except Exception:  # one task's trouble must not stop the others
                log.exception("governance.observe_failed", task=key)
        self._time_out_admissions(views, now, records)
        self._decide(views, now, records)
        await self._record(records)
        self._prune()
        if self.settings.dry_run:
            self._outbox.clear()
            return
        await self._act(views, now)

    def _watch_outside(self) -> None:
        governed = {team.namespace for team in self.policy.teams}
        outside = outside_governance(self._pods.values(), governed)
        moved = outside.by_node != self._outside.by_node
        self._outside = outside
        if moved:
            log.info("governance.outside", gpus=outside.gpus, pods=outside.pods)
            self._hand_out()

    # --- pods -> tasks ------------------------------------------------------------------------

    def _observe(
        self, key: str, view: TaskPods | None, now: float, records: list[AuditEntry]
    ) -> None:
        task = self.state.tasks.get(key)
        if task is None:
            if view is None or not (view.gated or view.admitted):
                return  # only ended pods: nothing to govern
            task = self._adopt(view, now, records)
        if view is None:
            view = TaskPods(task.namespace, task.name, ())
        memo = self._memos.setdefault(key, _Memo())
        self._tell_grace(view, memo)
        state = task.state
        if state.waiting:
            self._follow_waiting(task, view, memo, now, records)
        elif state in (TaskState.ADMITTED, TaskState.RUNNING):
            self._follow_holding(task, view, now, records)
        elif state is TaskState.PREEMPTED:
            self._follow_preempted(task, view, now)
        else:
            self._follow_done(task, view, memo, now, records)

    def _adopt(self, view: TaskPods, now: float, records: list[AuditEntry]) -> Task:
        """A task seen for the first time (new, or new to this coordinator after a restart:
        its pods' annotations hold what an earlier coordinator knew)."""
        occupying = view.occupying
        task = Task(
            namespace=view.namespace,
            name=view.task,
            pod_gpus=tuple(p.gpus for p in (occupying or view.gated)),
            queued_at=view.arrived_at or now,
            priority_class=view.priority_class,
            size=view.size,
            max_requeues=view.max_requeues,
            checkpoint_grace_s=view.checkpoint_grace_s,
        )
        task.requeue_count = view.requeues
        task.times_preempted = view.preemptions
        if view.admitted:
            # admitted before this coordinator looked, or by someone who removed the gate
            task.state = TaskState.ADMITTED
            task.admitted_at = now
            task.placement = _scheduled(occupying)
            if view.admitted_running():
                task.state = TaskState.RUNNING
                task.started_at = min(
                    (p.created_at for p in view.admitted if p.created_at is not None),
                    default=now,
                )
                task.last_checkpoint = view.last_checkpoint
            records.append(
                self._entry(
                    task,
                    "adopt",
                    f"found admitted ({task.state}): its pods carry no admission gate",
                    {"pods": [p.name for p in view.admitted]},
                )
            )
        elif view.requeues or view.preemptions:
            task.state = TaskState.REQUEUED
            task.requeue_cause = RequeueCause.FAULT if view.requeues else RequeueCause.PREEMPTION
            task.backoff_until = view.backoff_until
        self.state.add(task)
        log.info("governance.task_seen", task=task.key, state=str(task.state), gpus=task.gpus)
        return task

    def _follow_waiting(
        self, task: Task, view: TaskPods, memo: _Memo, now: float, records: list[AuditEntry]
    ) -> None:
        outside = [p for p in view.admitted if p.key not in self._removals]
        if outside:
            self._admitted_outside(task, outside, now, records)
            return
        gated = view.gated
        task.pod_gpus = tuple(p.gpus for p in gated)
        if gated:
            memo.empty_since = None
            task.size = view.size
            task.priority_class = view.priority_class
            task.max_requeues = view.max_requeues
            task.checkpoint_grace_s = view.checkpoint_grace_s
            return
        if memo.empty_since is None:
            memo.empty_since = now
        since = max(memo.empty_since, task.backoff_until or 0.0)
        if now - since >= self.settings.pods_return_s:
            self._drop(task, now, records)

    def _admitted_outside(
        self, task: Task, pods: list[PodInfo], now: float, records: list[AuditEntry]
    ) -> None:
        """Someone removed the gate (or the pods never had it): the pods run, so their GPUs
        are taken; the engine is told so with an admission it did not decide."""
        team = self.policy.team_for_namespace(task.namespace)
        task.pod_gpus = tuple(p.gpus for p in pods)
        reason = "admitted outside gpuwarden: its pods run without the admission gate"
        admit = Admit(task.key, team.name if team else "", task.gpus, 0, reason)
        self.state.apply(admit, now)
        records.append(self._entry(task, "admit", reason, {"pods": [p.name for p in pods]}))

    def _follow_holding(
        self, task: Task, view: TaskPods, now: float, records: list[AuditEntry]
    ) -> None:
        if not view.occupying:
            if view.succeeded:
                if task.state is TaskState.ADMITTED:
                    self.state.start(task.key, now)
                self.state.finish(task.key, now)
                log.info("governance.task_finished", task=task.key)
            elif not view.gated:
                self._lost_pods(task, now, records)
            return  # replacement pods (gated) are admitted by _act
        placement = view.placement()
        if placement is not None and placement != dict(task.placement):
            self.state.place(task.key, placement)
        if task.state is TaskState.ADMITTED and view.admitted_running():
            self.state.start(task.key, now)
            log.info("governance.task_running", task=task.key)
        if task.state is TaskState.RUNNING:
            self._note_checkpoint(task, view)

    def _note_checkpoint(self, task: Task, view: TaskPods) -> None:
        saved = view.last_checkpoint
        if saved is not None and (task.last_checkpoint is None or saved > task.last_checkpoint):
            self.state.checkpoint(task.key, saved)

    def _lost_pods(self, task: Task, now: float, records: list[AuditEntry]) -> None:
        """Its pods ended (not all in success) or were deleted, not by gpuwarden: it holds no
        GPUs any more and waits at its place for replacements, without using a requeue."""
        reason = "its pods ended or were deleted outside gpuwarden; waiting for replacements"
        requeue = Requeue(
            task.key, now, counted=False, lost_gpu_s=task.work_at_risk(now), reason=reason
        )
        self.state.apply(requeue, now)
        task.requeue_cause = None  # neither a preemption nor a fault
        task.pod_gpus = ()
        records.append(self._entry(task, "requeue", reason, {"counted": False}))

    def _follow_preempted(self, task: Task, view: TaskPods, now: float) -> None:
        if view.occupying:
            self._note_checkpoint(task, view)
            return
        if view.succeeded:
            self.state.finish(task.key, now)  # it completed within its grace
            log.info("governance.task_finished", task=task.key, preempted=True)
            return
        self.state.release(task.key, now)
        task.pod_gpus = tuple(p.gpus for p in view.gated)
        log.info("governance.task_released", task=task.key, preempted_by=task.preempted_by)

    def _follow_done(
        self, task: Task, view: TaskPods, memo: _Memo, now: float, records: list[AuditEntry]
    ) -> None:
        if task.state is TaskState.FINISHED and view.gated:
            # the same task submitted again: a new one, at the back of the queue
            self.state.remove(task.key)
            self._memos.pop(task.key, None)
            fresh = TaskPods.of(view.namespace, view.task, view.gated)
            self._adopt(fresh, now, records)
            return
        if task.state is TaskState.FAILED:
            for pod in view.gated:
                if pod.uid not in memo.warned:
                    memo.warned.add(pod.uid)
                    message = f"not admitted: task {task.key} failed ({task.reason})"
                    self._outbox.append(
                        _Event(pod, EventReason.TASK_REQUEUED, message, EventType.WARNING)
                    )
        if view.pods:
            memo.empty_since = None
            return
        if memo.empty_since is None:
            memo.empty_since = now
        if now - memo.empty_since >= self.settings.pods_return_s:
            self.state.remove(task.key)
            self._memos.pop(task.key, None)

    def _tell_grace(self, view: TaskPods, memo: _Memo) -> None:
        """One warning Event per pod whose checkpoint grace annotation is capped to the
        policy maximum or refused, saying what is used instead."""
        for pod in view.pods:
            if pod.checkpoint_grace_text is None or pod.uid in memo.grace_told or pod.terminal:
                continue
            problem = read_grace(pod.checkpoint_grace_text, self.policy.preemption).problem
            if problem is not None:
                memo.grace_told.add(pod.uid)
                log.warning("governance.grace_adjusted", pod=pod.name, problem=problem)
                self._outbox.append(
                    _Event(pod, EventReason.CHECKPOINT_GRACE_ADJUSTED, problem, EventType.WARNING)
                )

    def _drop(self, task: Task, now: float, records: list[AuditEntry]) -> None:
        reason = (
            f"dropped: no pods for {self.settings.pods_return_s:g} s; its owner did not "
            "create them again"
        )
        records.append(self._entry(task, "drop", reason, {"requeues": task.requeue_count}))
        self.state.remove(task.key)
        self._memos.pop(task.key, None)

    # --- decisions ----------------------------------------------------------------------------

    def _decide(self, views: Mapping[str, TaskPods], now: float, records: list[AuditEntry]) -> None:
        if not any(task.state.waiting for task in self.state.tasks.values()):
            return
        decisions = decide(self.state, self.policy, now)
        if decisions.stopped_at is not None:
            self._metrics.round_stopped()
            log.info(
                "governance.round_stopped",
                at=decisions.stopped_at,
                victims=len(decisions.preempt),
                limit=self.policy.preemption.max_victims_per_round,
            )
        for preempt in decisions.preempt:
            victim = self.state.task(preempt.victim)
            self.state.apply(preempt, now)
            self._count(preempt, victim)
            records.append(self._preempt_entry(preempt, victim))
            view = views.get(victim.key)
            grace = math.ceil(preempt.grace_s)
            for pod in view.admitted if view is not None else ():
                self._removals.setdefault(pod.key, _Removal(pod, victim.key, grace, "preempt"))
                message = (
                    f"preempted by {preempt.preemptor} ({preempt.cause}): {preempt.reason}; "
                    f"{grace} s to checkpoint"
                )
                self._outbox.append(
                    _Event(pod, EventReason.TASK_PREEMPTED, message, EventType.WARNING)
                )
        for admit in decisions.admit:
            task = self.state.task(admit.task)
            self.state.apply(admit, now)
            self._count(admit, task)
            self._memos.setdefault(task.key, _Memo()).admission_reason = admit.reason
            records.append(
                self._entry(
                    task,
                    "admit",
                    admit.reason,
                    {"gpus": admit.gpus, "borrowed": admit.borrowed, "fits": admit.nodes},
                )
            )
        for key, why in decisions.waiting.items():
            waiting = self.state.tasks.get(key)
            if waiting is not None and waiting.state.waiting:
                waiting.reason = why

    def _time_out_admissions(
        self, views: Mapping[str, TaskPods], now: float, records: list[AuditEntry]
    ) -> None:
        """Admitted tasks whose pods are not all running in time are requeued (or failed):
        counted, audited, their pods removed and told (Kueue's waitForPodsReady)."""
        admitted = [t for t in self.state.tasks.values() if t.state is TaskState.ADMITTED]
        for decision in on_admission_timeout(admitted, now, self.policy.requeue):
            task = self.state.task(decision.task)
            self.state.apply(decision, now)
            self._count(decision, task)
            self._metrics.admission_timeout(self._team(task) or "")
            limit = (
                task.max_requeues
                if task.max_requeues is not None
                else self.policy.requeue.max_requeues
            )
            details: dict[str, Any] = {
                "cause": "admitted-timeout",
                "requeues": task.requeue_count,
                "max_requeues": limit,
            }
            if isinstance(decision, Requeue):
                details["backoff_until"] = decision.backoff_until
                records.append(self._entry(task, "requeue", decision.reason, details))
            else:
                records.append(self._entry(task, "fail", decision.reason, details))
            view = views.get(task.key)
            self._remove_timed_out(decision, task, view.occupying if view else ())

    def _remove_timed_out(
        self, decision: Requeue | Fail, task: Task, pods: Iterable[PodInfo]
    ) -> None:
        grace = math.ceil(self.policy.preemption.grace_for(task.checkpoint_grace_s))
        if isinstance(decision, Requeue):
            task.pod_gpus = ()  # its owner creates them again, gated
            message = decision.reason
        else:
            message = f"failed, not requeued: {decision.reason}"
        for pod in pods:
            self._removals.setdefault(pod.key, _Removal(pod, task.key, grace, "admitted-timeout"))
            self._outbox.append(_Event(pod, EventReason.TASK_REQUEUED, message, EventType.WARNING))

    def _remove_after_fault(
        self, decision: Requeue | Fail, task: Task, view: TaskPods, node: str, now: float
    ) -> None:
        grace = math.ceil(self.policy.preemption.grace_for(task.checkpoint_grace_s))
        if isinstance(decision, Requeue):
            task.pod_gpus = ()
            cause, message = "requeue", decision.reason
        else:
            cause, message = "fail", f"failed, not requeued: {decision.reason}"
        force_at = now + grace + self.settings.terminating_timeout_s
        for pod in view.occupying:
            on_node = pod.node_name == node
            removal = self._removals.get(pod.key)
            if removal is None:
                removal = _Removal(pod, task.key, grace, cause, evicted=pod.terminating)
                self._removals[pod.key] = removal
            if on_node and removal.force_at is None:
                removal.force_at = force_at
            self._outbox.append(_Event(pod, EventReason.TASK_REQUEUED, message, EventType.WARNING))

    # --- acting -------------------------------------------------------------------------------

    async def _act(self, views: Mapping[str, TaskPods], now: float) -> None:
        calls: list[Awaitable[None]] = []
        for key, task in self.state.tasks.items():
            view = views.get(key)
            if view is None:
                continue
            if task.state in (TaskState.ADMITTED, TaskState.RUNNING):
                due = [p for p in view.gated if self._backoff.due(p.key, "ungate", now)]
                if due:
                    memo = self._memos.setdefault(key, _Memo())
                    calls.append(self._admit_pods(task, due, memo, now))
            elif task.state.waiting:
                calls.extend(self._remember_on(task, view, now))
        for removal in list(self._removals.values()):
            current = removal.pod
            if not removal.evicted:
                if self._backoff.due(current.key, "evict", now):
                    calls.append(self._evict(removal, now))
            elif (
                removal.force_at is not None
                and now >= removal.force_at
                and self._backoff.due(current.key, "force_delete", now)
            ):
                calls.append(self._force_delete(removal, now))
        events, self._outbox = self._outbox, []
        calls.extend(self._send(event) for event in events)
        await self._bounded(calls)

    def _prune(self) -> None:
        """Forget pods that are gone or ended; follow the others' latest state."""
        for key, removal in list(self._removals.items()):
            current = self._pods.get(key)
            if current is None or current.uid != removal.pod.uid or current.terminal:
                del self._removals[key]
                continue
            removal.pod = current
            removal.evicted = removal.evicted or current.terminating
        self._backoff.keep_only(self._pods)

    async def _bounded(self, calls: list[Awaitable[None]]) -> None:
        limit = asyncio.Semaphore(self.settings.max_parallel_calls)

        async def one(call: Awaitable[None]) -> None:
            async with limit:
                try:
                    await call
                except Exception:  # one pod's trouble must not stop the others
                    log.exception("governance.call_failed")

        await asyncio.gather(*(one(call) for call in calls))

    async def _admit_pods(self, task: Task, pods: list[PodInfo], memo: _Memo, now: float) -> None:
        reason = memo.admission_reason or "replacement pod of an admitted task"
        names = [p.name for p in pods]
        started = await self._started(task, "remove_admission_gate", reason, {"pods": names})
        outcomes: dict[str, str] = {}
        failed: list[str] = []
        for pod in pods:
            if task.state not in (TaskState.ADMITTED, TaskState.RUNNING):
                failed.append(pod.name)  # requeued meanwhile (a node fault): admit no more
                outcomes[pod.name] = f"not admitted: the task is {task.state} now"
                continue
            result = await self._api.remove_scheduling_gate(pod.namespace, pod.name)
            self._metrics.pod_action("remove_admission_gate", result.ok)
            outcomes[pod.name] = result.detail
            if result.ok:
                self._backoff.succeeded(pod.key, "ungate")
                self._outbox.append(
                    _Event(pod, EventReason.TASK_ADMITTED, reason, EventType.NORMAL)
                )
            else:
                failed.append(pod.name)
                self._backoff.failed(pod.key, "ungate", now)
        outcome = "ok" if not failed else ("failed" if len(failed) == len(names) else "partial")
        await self._finished(started, outcome, {"pods": outcomes})
        if not failed:
            memo.admission_reason = ""

    async def _evict(self, removal: _Removal, now: float) -> None:
        pod = removal.pod
        task = self.state.tasks.get(removal.task)
        details = {
            "pod": pod.name,
            "grace_s": removal.grace_s,
            "cause": removal.cause,
            "node": pod.node_name,
        }
        started = await self._started_for(
            removal.task, task, "evict_pod", f"{removal.cause}: evict {pod.name}", details
        )
        result = await self._api.evict(pod.namespace, pod.name, removal.grace_s)
        self._metrics.pod_action("evict_pod", result.ok)
        await self._finished(started, str(result.outcome), {"detail": result.detail})
        if result.outcome is EvictOutcome.EVICTED:
            removal.evicted = True
            self._backoff.succeeded(pod.key, "evict")
            if removal.force_at is not None:
                removal.force_at = max(
                    removal.force_at,
                    self._clock() + removal.grace_s + self.settings.terminating_timeout_s,
                )
        elif result.outcome is EvictOutcome.GONE:
            self._removals.pop(pod.key, None)
        elif result.outcome is EvictOutcome.REFUSED and removal.force_at is not None:
            # a disruption budget protects healthy pods; these are on a node out of service
            removal.evicted = True
            removal.force_at = now
        else:
            self._backoff.failed(pod.key, "evict", now)
            log.warning("governance.evict_failed", pod=pod.name, detail=result.detail)

    async def _force_delete(self, removal: _Removal, now: float) -> None:
        pod = removal.pod
        task = self.state.tasks.get(removal.task)
        reason = (
            f"{removal.cause}: {pod.name} still terminating on failed node {pod.node_name} "
            "past its grace; its kubelet is presumed gone"
        )
        started = await self._started_for(
            removal.task, task, "force_delete_pod", reason, {"pod": pod.name, "node": pod.node_name}
        )
        result = await self._api.force_delete(pod.namespace, pod.name)
        self._metrics.pod_action("force_delete_pod", result.ok)
        await self._finished(started, "ok" if result.ok else "failed", {"detail": result.detail})
        if result.ok:
            self._removals.pop(pod.key, None)
        else:
            self._backoff.failed(pod.key, "force_delete", now)

    def _remember_on(self, task: Task, view: TaskPods, now: float) -> Iterator[Awaitable[None]]:
        """Write the task's queue memory on its recreated pods (only tasks that have some)."""
        if not (task.requeue_count or task.times_preempted):
            return
        wanted = {
            QUEUED_AT_ANNOTATION: format_time(task.queued_at),
            REQUEUES_ANNOTATION: str(task.requeue_count),
            PREEMPTIONS_ANNOTATION: str(task.times_preempted),
            BACKOFF_UNTIL_ANNOTATION: (
                format_time(task.backoff_until) if task.backoff_until is not None else None
            ),
        }
        for pod in view.gated:
            if _memory_of(pod) != wanted and self._backoff.due(pod.key, "annotate", now):
                yield self._annotate(pod, wanted, now)

    async def _annotate(self, pod: PodInfo, annotations: dict[str, str | None], now: float) -> None:
        result = await self._api.annotate(pod.namespace, pod.name, annotations)
        self._metrics.pod_action("annotate", result.ok)
        if result.ok:
            self._backoff.succeeded(pod.key, "annotate")
        else:
            self._backoff.failed(pod.key, "annotate", now)

    async def _send(self, event: _Event) -> None:
        result = await self._api.record_event(
            event.pod.ref, event.reason, event.message, event.event_type
        )
        if not result.ok:
            log.warning("governance.event_failed", pod=event.pod.name, detail=result.detail)

    # --- audit and metrics --------------------------------------------------------------------

    def _team(self, task: Task) -> str | None:
        team = self.policy.team_for_namespace(task.namespace)
        return team.name if team is not None else None

    def _entry(
        self, task: Task, action: str, reason: str, details: Mapping[str, Any]
    ) -> AuditEntry:
        return AuditEntry(
            kind=AuditKind.DECISION,
            actor=self.settings.actor,
            task=task.key,
            team=self._team(task),
            action=action,
            reason=reason,
            details=dict(details),
            dry_run=self.settings.dry_run,
        )

    def _preempt_entry(self, preempt: Preempt, victim: Task) -> AuditEntry:
        return self._entry(
            victim,
            "preempt",
            preempt.reason,
            {
                "preemptor": preempt.preemptor,
                "victim": preempt.victim,
                "cause": str(preempt.cause),
                "grace_s": preempt.grace_s,
                "gpus": preempt.gpus,
                "work_lost_gpu_s": round(preempt.work_lost_gpu_s, 1),
            },
        )

    def _fault_entry(
        self, decision: Requeue | Fail, task: Task, node: str, node_reason: str
    ) -> AuditEntry:
        limit = (
            task.max_requeues if task.max_requeues is not None else self.policy.requeue.max_requeues
        )
        details: dict[str, Any] = {
            "failed_node": node,
            "node_reason": node_reason,
            "requeues": task.requeue_count,
            "max_requeues": limit,
        }
        if isinstance(decision, Requeue):
            details |= {
                "counted": decision.counted,
                "backoff_until": decision.backoff_until,
                "lost_gpu_s": round(decision.lost_gpu_s, 1),
            }
            return self._entry(task, "requeue", decision.reason, details)
        return self._entry(task, "fail", decision.reason, details)

    async def _record(self, entries: list[AuditEntry]) -> None:
        for entry in entries:
            log.info(
                "governance.decision",
                task=entry.task,
                action=entry.action,
                reason=entry.reason,
                dry_run=entry.dry_run,
            )
        if entries:
            await asyncio.to_thread(_record_all, self._audit, entries)

    async def _started(
        self, task: Task, action: str, reason: str, details: Mapping[str, Any]
    ) -> int:
        return await self._started_for(task.key, task, action, reason, details)

    async def _started_for(
        self, key: str, task: Task | None, action: str, reason: str, details: Mapping[str, Any]
    ) -> int:
        entry = AuditEntry(
            kind=AuditKind.ACTION_STARTED,
            actor=self.settings.actor,
            task=key,
            team=self._team(task) if task is not None else None,
            action=action,
            reason=reason,
            details=dict(details),
        )
        return await asyncio.to_thread(self._audit.record, entry)

    async def _finished(self, started: int, outcome: str, details: Mapping[str, Any]) -> None:
        await asyncio.to_thread(
            self._audit.finish,
            started,
            actor=self.settings.actor,
            outcome=outcome,
            details=dict(details),
        )

    def _count(self, decision: Admit | Preempt | Requeue | Fail, task: Task) -> None:
        self._metrics.decision(type(decision).__name__.lower(), self._team(task) or "")

    def _snapshot(self) -> tuple[GovernanceState, Policy, float]:
        return self.state, self.policy, self._clock()


def _kept(pod: PodInfo) -> bool:
    """A pod the governor follows: governed (the task label) or taking GPUs."""
    return bool(pod.task) or pod.gpus > 0


def _record_all(audit: AuditLog, entries: list[AuditEntry]) -> None:
    for entry in entries:
        audit.record(entry)


def _scheduled(pods: Iterable[PodInfo]) -> dict[str, int]:
    nodes: dict[str, int] = {}
    for pod in pods:
        if pod.node_name is not None:
            nodes[pod.node_name] = nodes.get(pod.node_name, 0) + pod.gpus
    return nodes


def _memory_of(pod: PodInfo) -> dict[str, str | None]:
    return {
        QUEUED_AT_ANNOTATION: format_time(pod.queued_at) if pod.queued_at is not None else None,
        REQUEUES_ANNOTATION: str(pod.requeues) if pod.requeues is not None else None,
        PREEMPTIONS_ANNOTATION: str(pod.preemptions) if pod.preemptions is not None else None,
        BACKOFF_UNTIL_ANNOTATION: (
            format_time(pod.backoff_until) if pod.backoff_until is not None else None
        ),
    }
