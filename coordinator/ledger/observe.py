"""What governance holds at one instant, as the ledger reads it. Pure.

Borrowed GPUs are the engine's own number per team (``team_summaries``: what it holds beyond
its guarantee). A team's borrowed GPUs are put on its most recently admitted tasks first:
the tasks that took it past its guarantee, and the ones reclaim preempts first. Lent GPUs
are the engine's per-lender number too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from coordinator.governance.observe import team_summaries
from coordinator.governance.policy import Policy
from coordinator.governance.tasks import GovernanceState, RequeueCause, Task

NO_TEAM = "(no team)"
"""Tasks in a namespace no team of the policy names."""


# Holding and TaskFacts are named tuples, not dataclasses: a sample of 10,000 tasks builds
# thousands of each on the event loop every few seconds, and a frozen dataclass costs five
# times a tuple to make and four times to compare (the ledger compares each task's facts
# with the last sample's).
class Holding(NamedTuple):
    """A task holding GPUs (admitted, running, or preempted and not yet gone)."""

    key: tuple[str, float]
    """Task name and arrival: one run of a task, across its requeues."""
    team: str
    gpus: int
    borrowed: int
    placement: tuple[tuple[str, int], ...]
    """GPUs per node; empty while the scheduler has not placed its pods."""
    owners: frozenset[str]
    """Who its processes on a GPU belong to (pod UIDs, Slurm job ids), when known."""


class TaskFacts(NamedTuple):
    """What the task report says about a task, as of this instant."""

    key: tuple[str, float]
    team: str
    priority_class: str | None
    gpus: int
    state: str
    admitted_at: float | None
    started_at: float | None
    last_checkpoint: float | None
    preempted_at: float | None
    fault_requeue: bool
    """Back in the queue (or failed) after a node fault, not a preemption."""
    preemptions: int
    requeues: int
    finished_at: float | None
    gone: bool = False
    """No longer in governance's state (finished, failed or dropped)."""


@dataclass(frozen=True)
class Observation:
    at: float
    holdings: tuple[Holding, ...]
    lent: Mapping[str, int]
    healthy_by_node: Mapping[str, int]
    tasks: tuple[TaskFacts, ...]


def observe(
    state: GovernanceState,
    policy: Policy,
    at: float,
    owners: Mapping[str, frozenset[str]] | None = None,
) -> Observation:
    """Governance's state at ``at``. ``owners``: task key -> pod UIDs or job ids. Drains
    ``state.removed``: each task that left is reported once, as gone."""
    summaries = team_summaries(state, policy)
    team_of_namespace = {team.namespace: team.name for team in policy.teams}
    borrowed_left = {s.team: s.borrowed for s in summaries}
    holding = [t for t in state.tasks.values() if t.state.holding]
    # newest admission first: they carry the team's borrowed GPUs
    holding.sort(key=lambda t: (-(t.admitted_at or t.queued_at), t.key))
    holdings = []
    for task in holding:
        team = team_of_namespace.get(task.namespace, NO_TEAM)
        borrowed = min(task.gpus, borrowed_left.get(team, 0))
        if borrowed:
            borrowed_left[team] -= borrowed
        holdings.append(Holding(
            key=(task.key, task.queued_at), team=team, gpus=task.gpus, borrowed=borrowed,
            placement=tuple(sorted(task.placement.items())),
            owners=(owners or {}).get(task.key, frozenset()),
        ))  # fmt: skip
    facts = [_facts(t, team_of_namespace) for t in state.tasks.values()
             if t.admitted_at is not None or t.times_preempted or t.requeue_count]  # fmt: skip
    while state.removed:
        gone = state.removed.popleft()
        if gone.admitted_at is not None or gone.finished_at is not None:
            facts.append(_facts(gone, team_of_namespace, gone=True))
    capacity = state.capacity
    healthy = dict(capacity.by_node) if capacity.by_node is not None \
        else {"": capacity.healthy_gpus}  # fmt: skip
    return Observation(
        at=at, holdings=tuple(holdings), lent={s.team: s.lent for s in summaries if s.lent},
        healthy_by_node=healthy, tasks=tuple(facts),
    )


def _facts(task: Task, teams: Mapping[str, str], *, gone: bool = False) -> TaskFacts:
    return TaskFacts(
        key=(task.key, task.queued_at), team=teams.get(task.namespace, NO_TEAM),
        priority_class=task.priority_class, gpus=task.gpus, state=_status(task, gone),
        admitted_at=task.admitted_at, started_at=task.started_at,
        last_checkpoint=task.last_checkpoint, preempted_at=task.preempted_at,
        fault_requeue=task.requeue_cause == RequeueCause.FAULT,
        preemptions=task.times_preempted, requeues=task.requeue_count,
        finished_at=task.finished_at, gone=gone,
    )  # fmt: skip


def _status(task: Task, gone: bool) -> str:
    if gone and not task.state.done:
        return "removed"  # dropped by governance (its pods never came back)
    return task.state.value
