"""Pure summaries for the API and metrics: per team and per priority class.

HyperPod's dashboards show, per team, allocated, in-use, borrowed and lent GPUs, and per
priority class, running / pending / preempted counts with average and longest run and wait
times; these are the numbers behind such views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from coordinator.governance.fairshare import scaled_guarantees
from coordinator.governance.policy import Policy
from coordinator.governance.tasks import GovernanceState, RequeueCause, Task, TaskState


@dataclass(frozen=True)
class TeamSummary:
    team: str
    namespace: str
    quota: int
    guarantee: int
    """The quota, scaled down when healthy capacity is below the sum of quotas."""
    allocated: int
    """GPUs held by the team's admitted, running and still-preempting tasks."""
    in_use: int
    """GPUs of its running tasks."""
    borrowed: int
    lent: int
    """Of its idle guarantee, GPUs other teams are using now."""
    pending_tasks: int


@dataclass(frozen=True)
class ClassSummary:
    priority_class: str
    running: int
    pending: int
    preempted: int
    """Being preempted, or back in the queue after a preemption."""
    avg_run_s: float
    longest_run_s: float
    avg_wait_s: float
    longest_wait_s: float


def team_summaries(state: GovernanceState, policy: Policy) -> list[TeamSummary]:
    """One line per team in policy order. Borrowing is first served from GPUs no team owns,
    then attributed to lending teams in proportion to their idle guarantee."""
    healthy = healthy_gpus(state)
    guarantees = scaled_guarantees([team.quota.gpus for team in policy.teams], healthy)
    index_of = {team.namespace: index for index, team in enumerate(policy.teams)}
    allocated = [0] * len(policy.teams)
    in_use = [0] * len(policy.teams)
    pending = [0] * len(policy.teams)
    for task in state.tasks.values():
        index = index_of.get(task.namespace)
        if index is None:
            continue
        if task.state.holding:
            allocated[index] += task.gpus
            if task.state is TaskState.RUNNING:
                in_use[index] += task.gpus
        elif task.state.waiting:
            pending[index] += 1
    borrowed = [
        max(0, held - guarantee) for held, guarantee in zip(allocated, guarantees, strict=True)
    ]
    lent = _attribute_lending(policy, guarantees, allocated, sum(borrowed), healthy)
    return [
        TeamSummary(
            team=team.name,
            namespace=team.namespace,
            quota=team.quota.gpus,
            guarantee=guarantees[index],
            allocated=allocated[index],
            in_use=in_use[index],
            borrowed=borrowed[index],
            lent=lent[index],
            pending_tasks=pending[index],
        )
        for index, team in enumerate(policy.teams)
    ]


def healthy_gpus(state: GovernanceState) -> int:
    """The healthy capacity the guarantees are shares of."""
    capacity = state.capacity
    return sum(capacity.by_node.values()) if capacity.by_node is not None else capacity.healthy_gpus


@dataclass(frozen=True)
class UnassignedSummary:
    """Capacity outside every team's guarantee: where borrowing is served from first."""

    gpus: int
    """Healthy GPUs beyond the sum of the guarantees."""
    used: int
    """Of those, GPUs that borrowing teams hold now. With the teams' ``lent``, this is what
    they borrowed: ``sum(borrowed) == sum(lent) + used``."""


def unassigned_summary(state: GovernanceState, teams: Sequence[TeamSummary]) -> UnassignedSummary:
    """The unassigned line below :func:`team_summaries`' ``teams``."""
    gpus = max(0, healthy_gpus(state) - sum(t.guarantee for t in teams))
    return UnassignedSummary(gpus=gpus, used=min(gpus, sum(t.borrowed for t in teams)))


def _attribute_lending(
    policy: Policy, guarantees: list[int], allocated: list[int], borrowed: int, healthy: int
) -> list[int]:
    """Borrowing beyond the unowned GPUs, on the teams' idle guarantees: lending teams'
    first, in proportion to their idle guarantee; what is left on the idle guarantee of
    teams that do not lend.

    The second happens although the engine never lends a ``dont-lend`` team's GPUs: a
    lending team that comes back takes free GPUs rather than reclaiming its own from the
    borrower, so the borrower ends on the other team's guarantee. That team takes it back
    by reclaim when it needs it; until then its idle GPUs are in use, and counted lent, so
    that borrowed = lent + unassigned in use holds."""
    unowned = max(0, healthy - sum(guarantees))
    left = max(0, borrowed - unowned)
    idle = [max(0, guarantee - held) for guarantee, held in zip(guarantees, allocated, strict=True)]
    lent = [0] * len(idle)
    for lending in (True, False):
        pool = [
            gpus if team.lending.lends == lending else 0
            for team, gpus in zip(policy.teams, idle, strict=True)
        ]
        share = min(left, sum(pool))
        if share:
            lent = [a + b for a, b in zip(lent, scaled_guarantees(pool, share), strict=True)]
            left -= share
    return lent


def class_summaries(state: GovernanceState, policy: Policy, now: float) -> list[ClassSummary]:
    """One line per priority class in policy order, then one per class seen on tasks but
    not in the policy (and ``""`` for tasks without one). Times cover the tasks the state
    still holds: run time from start to finish (or now), wait time from arrival to
    admission (or now, while waiting)."""
    names = [cls.name for cls in policy.priority_classes]
    by_class: dict[str, list[Task]] = {name: [] for name in names}
    for task in state.tasks.values():
        by_class.setdefault(task.priority_class or "", []).append(task)
    extra = sorted(name for name in by_class if name not in names)
    return [_class_summary(name, by_class[name], now) for name in names + extra]


def _class_summary(name: str, tasks: list[Task], now: float) -> ClassSummary:
    runs: list[float] = []
    waits: list[float] = []
    running = pending = preempted = 0
    for task in tasks:
        if task.state is TaskState.RUNNING:
            running += 1
        if task.state.waiting:
            pending += 1
        if task.state is TaskState.PREEMPTED or (
            task.state is TaskState.REQUEUED and task.requeue_cause is RequeueCause.PREEMPTION
        ):
            preempted += 1
        if task.started_at is not None:
            end = task.finished_at if task.finished_at is not None else now
            if task.state in (TaskState.RUNNING, TaskState.PREEMPTED, TaskState.FINISHED):
                runs.append(max(0.0, end - task.started_at))
        if task.state.waiting:
            waits.append(max(0.0, now - task.queued_at))
        elif task.admitted_at is not None:
            waits.append(max(0.0, task.admitted_at - task.queued_at))
    return ClassSummary(
        priority_class=name,
        running=running,
        pending=pending,
        preempted=preempted,
        avg_run_s=sum(runs) / len(runs) if runs else 0.0,
        longest_run_s=max(runs, default=0.0),
        avg_wait_s=sum(waits) / len(waits) if waits else 0.0,
        longest_wait_s=max(waits, default=0.0),
    )
