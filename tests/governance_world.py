"""Builders for the governance tests: a policy from a few keywords, and a world of tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from coordinator.governance import (
    Capacity,
    Decisions,
    GovernanceState,
    Policy,
    Task,
    TaskState,
    decide,
)
from coordinator.governance.policy import policy_from_mapping

CLASSES = {"critical": 100, "high": 80, "mid": 50, "low": 10}


def team(
    name: str,
    quota: int,
    *,
    lending: str = "lend-and-borrow",
    limit: int = 100,
    weight: int = 50,
    preempt: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": name,
        "quota": {"gpus": quota},
        "lending": lending,
        "borrowLimitPercent": limit,
        "fairShareWeight": weight,
        "preemptLowerPriority": preempt,
    }


def policy(
    *teams: dict[str, Any],
    admission: str = "task-ranking",
    idle: str = "fair-share",
    classes: Mapping[str, int] = CLASSES,
    **extra: Any,
) -> Policy:
    return policy_from_mapping(
        {
            "admission": admission,
            "idleCompute": idle,
            "priorityClasses": [{"name": n, "weight": w} for n, w in classes.items()],
            "teams": list(teams),
            **extra,
        }
    )


@dataclass
class World:
    """Tasks in given states on a cluster of ``gpus`` healthy GPUs (or per node)."""

    gpus: int = 0
    nodes: Mapping[str, int] | None = None
    state: GovernanceState = field(init=False)

    def __post_init__(self) -> None:
        capacity = (
            Capacity.of_nodes(self.nodes)
            if self.nodes is not None
            else Capacity.of_count(self.gpus)
        )
        self.state = GovernanceState(capacity)

    def pending(
        self,
        namespace: str,
        name: str,
        gpus: int,
        cls: str | None = "mid",
        *,
        at: float = 0.0,
        size: int = 1,
        pods: int | None = None,
    ) -> Task:
        """A waiting gang of ``size`` pods sharing ``gpus`` (``pods`` known so far)."""
        per_pod = gpus // size
        known = size if pods is None else pods
        task = Task(
            namespace, name, (per_pod,) * known, queued_at=at, priority_class=cls, size=size
        )
        self.state.add(task)
        return task

    def running(
        self,
        namespace: str,
        name: str,
        gpus: int,
        cls: str | None = "mid",
        *,
        admitted: float = 0.0,
        started: float | None = None,
        checkpoint: float | None = None,
        nodes: Mapping[str, int] | None = None,
        times_preempted: int = 0,
        preempted_by: str | None = None,
    ) -> Task:
        task = Task(namespace, name, (gpus,), queued_at=admitted, priority_class=cls)
        task.state = TaskState.RUNNING
        task.admitted_at = admitted
        task.started_at = admitted if started is None else started
        task.last_checkpoint = checkpoint
        task.placement = dict(nodes or {})
        task.times_preempted = times_preempted
        task.preempted_by = preempted_by
        self.state.add(task)
        return task

    def decide(self, policy: Policy, now: float = 1000.0) -> Decisions:
        return decide(self.state, policy, now)


def admitted(decisions: Decisions) -> list[str]:
    return [admit.task for admit in decisions.admit]


def victims(decisions: Decisions) -> list[str]:
    return [preempt.victim for preempt in decisions.preempt]
