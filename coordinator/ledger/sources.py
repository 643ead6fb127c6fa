"""Where the recorder reads from: governance (what is held), the model (what is measured).

``GpuState.owners`` comes with the agent's attribution (``--proc-root``): from an agent
without it (an older one, or attribution off) a GPU has no owners, and the ledger shares a
node's GPUs among its tasks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from coordinator.governance.policy import Policy
from coordinator.governance.tasks import GovernanceState
from coordinator.ledger.accrue import GpuReading, NodeReading, Readings
from coordinator.model import ClusterModel
from gpuwarden_common.wire import GpuOwner


@dataclass(frozen=True)
class GovernanceView:
    state: GovernanceState
    policy: Policy
    now: float
    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Task key -> owner keys of its processes (``pod:UID``, ``slurm:JOBID``)."""


@runtime_checkable
class Accountable(Protocol):
    """A :class:`~coordinator.task_governance.TaskGovernance` whose tasks the ledger can
    account (Kubernetes, the simulated cluster; Slurm's own accounting keeps its jobs)."""

    def accounting_view(self) -> GovernanceView | None: ...


def owner_keys(owners: Iterable[GpuOwner]) -> frozenset[str]:
    """The wire's ``GpuOwner`` entries as keys a task's owners are matched with."""
    keys = set()
    for owner in owners:
        if owner.pod_uid:
            keys.add(f"pod:{owner.pod_uid}")
        if owner.slurm_job_id is not None:
            keys.add(f"slurm:{owner.slurm_job_id}")
    return frozenset(keys)


def model_readings(model: ClusterModel) -> Readings:
    def reading(node: str) -> NodeReading | None:
        record = model.node(node)
        if record is None or not record.last_state_at:
            return None
        return NodeReading(
            record.last_state_at,
            tuple(GpuReading(g.utilization_pct, owner_keys(g.owners)) for g in record.gpus),
        )

    return reading


def model_node_types(model: ClusterModel) -> Mapping[str, str]:
    return {record.name: record.instance_type for record in model.nodes()}
