"""How the coordinator acts on machines: one interface, several back ends.

``coordinator.kube.KubeActuator`` applies DESIGN.md's Kubernetes contract; ``LocalActuator``
records what it would do (demo, systemd installs). ``--dry-run`` is handled above both: the
decision is audited and no actuator method is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class NodeMark(StrEnum):
    """Values of the ``gpuwarden.io/node-health`` label."""

    SCHEDULABLE = "Schedulable"
    UNSCHEDULABLE = "Unschedulable"
    PENDING_REBOOT = "UnschedulablePendingReboot"
    PENDING_REPLACEMENT = "UnschedulablePendingReplacement"


@dataclass(frozen=True)
class NodeFacts:
    """What the cluster itself says about a node (None: unknown or no cluster)."""

    name: str
    exists: bool = True
    ready: bool | None = None
    instance_type: str | None = None
    mark: NodeMark | None = None
    cordoned_by_us: bool = False
    unschedulable: bool = False


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    changed: bool
    detail: str = ""


class Actuator(Protocol):
    name: str

    async def mark_unhealthy(
        self, node: str, mark: NodeMark, reason: str, message: str
    ) -> ActionResult:
        """Cordon (recording that we did), taint, label ``mark``, condition GPUHealthy=False,
        and an Event. Idempotent: applying the same mark twice changes nothing."""
        ...

    async def mark_healthy(self, node: str, reason: str, message: str) -> ActionResult:
        """Undo exactly what :meth:`mark_unhealthy` did; never uncordon a node that someone
        else cordoned. Idempotent."""
        ...

    async def node_facts(self, node: str) -> NodeFacts: ...

    async def list_marked(self) -> list[NodeFacts]:
        """Nodes that carry gpuwarden's marks now: the cluster's side of a restart rebuild."""
        ...

    async def close(self) -> None: ...
