"""The coordinator's side of task governance: one interface for where tasks live
(Kubernetes pods, or the built-in simulated cluster) and the API views of its state.

The engine (``coordinator.governance``) decides; an implementation of
:class:`TaskGovernance` feeds it capacity and tasks and carries out its decisions.
"""

from __future__ import annotations

from typing import Any, Protocol

from coordinator.governance.observe import class_summaries, team_summaries, unassigned_summary
from coordinator.governance.policy import Policy
from coordinator.governance.tasks import GovernanceState, Task, TaskState
from coordinator.pods import OutsideGovernance

Json = dict[str, Any]


class TaskGovernance(Protocol):
    def teams(self) -> list[Json]: ...
    def unassigned(self) -> Json | None:
        """Capacity outside every team's guarantee, and how much of it borrowers use (None
        where teams are not gpuwarden's to govern)."""
        ...

    def tasks(self) -> list[Json]: ...
    def priority_classes(self) -> list[Json]: ...

    def set_capacity(self, healthy_gpus_by_node: dict[str, int]) -> None:
        """The coordinator's model changed: GPUs on nodes out of service no longer count."""
        ...

    async def on_node_out(self, node: str, reason: str) -> None:
        """``node`` was taken out for recovery: requeue (or fail) the tasks on it."""
        ...

    async def run(self) -> None:
        """Decide and act until cancelled."""
        ...


def teams_json(state: GovernanceState, policy: Policy, utilization: dict[str, float]) -> list[Json]:
    """``utilization``: team -> mean GPU utilization (percent) of its running tasks' GPUs,
    from the agents' per-process data where the caller has it."""
    return [
        {
            "name": t.team, "namespace": t.namespace, "quota": t.quota, "guarantee": t.guarantee,
            "allocated": t.allocated, "in_use": t.in_use, "borrowed": t.borrowed, "lent": t.lent,
            "pending_tasks": t.pending_tasks, "utilization_pct": utilization.get(t.team),
        }
        for t in team_summaries(state, policy)
    ]


def unassigned_json(state: GovernanceState, policy: Policy) -> Json:
    """The line under the teams that makes their numbers add up: borrowed GPUs come from
    lending teams (their ``lent``) or from here (``used``)."""
    line = unassigned_summary(state, team_summaries(state, policy))
    return {"gpus": line.gpus, "used": line.used, "idle": line.gpus - line.used}
def outside_json(outside: OutsideGovernance) -> Json:
    """GPU pods gpuwarden does not govern, as one row among the teams: their GPUs are not
    handed out, and an operator should see where they went."""
    return {
        "name": "outside governance", "namespace": ", ".join(outside.namespaces),
        "quota": 0, "guarantee": 0, "allocated": outside.gpus, "in_use": outside.gpus,
        "borrowed": 0, "lent": 0, "pending_tasks": 0, "utilization_pct": None,
        "outside_governance": True, "pods": outside.pods, "namespaces": list(outside.namespaces),
    }


def classes_json(state: GovernanceState, policy: Policy, now: float) -> list[Json]:
    weights = policy.class_weights()
    return [
        {
            "name": c.priority_class, "weight": weights.get(c.priority_class),
            "running": c.running, "pending": c.pending, "preempted": c.preempted,
            "avg_wait_s": round(c.avg_wait_s, 1), "avg_run_s": round(c.avg_run_s, 1),
            "longest_wait_s": round(c.longest_wait_s, 1),
            "longest_run_s": round(c.longest_run_s, 1),
        }
        for c in class_summaries(state, policy, now)
    ]


def tasks_json(state: GovernanceState, policy: Policy, now: float | None = None) -> list[Json]:
    """``now`` (the governance clock) adds ``waited_s`` (queued to admitted, or to now while
    waiting) and ``running_s`` (started to now) so that readers need not know that clock."""
    out = []
    for task in sorted(state.tasks.values(), key=lambda t: (t.queued_at, t.key)):
        team = policy.team_for_namespace(task.namespace)
        out.append({
            "task": task.key, "team": team.name if team else None,
            "priority_class": task.priority_class, "gpus": task.gpus, "size": task.size,
            "state": task.state.value, "queued_at": task.queued_at,
            "admitted_at": task.admitted_at, "started_at": task.started_at,
            "last_checkpoint": task.last_checkpoint, "requeues": task.requeue_count,
            "times_preempted": task.times_preempted, "preempted_by": task.preempted_by,
            "nodes": dict(task.placement), "reason": task.reason,
            "waited_s": _waited(task, now), "running_s": _running(task, now),
        })
    return out


def _waited(task: Task, now: float | None) -> float | None:
    end = task.admitted_at if task.admitted_at is not None else now
    return None if end is None else round(max(0.0, end - task.queued_at), 1)


def _running(task: Task, now: float | None) -> float | None:
    if now is None or task.started_at is None or task.state is not TaskState.RUNNING:
        return None
    return round(max(0.0, now - task.started_at), 1)
