"""How the coordinator acts on machines: one interface, several back ends.

``coordinator.backends.kubernetes.actuator.KubeActuator`` applies DESIGN.md's Kubernetes contract,
``coordinator.backends.slurm.SlurmActuator`` its Slurm contract; ``LocalActuator`` records what
it would do (demo, systemd installs). ``--dry-run`` is handled above both: the
decision is audited and no actuator method is called.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable


class NodeMark(StrEnum):
    """Values of the ``gpuwarden.io/node-health`` label."""

    SCHEDULABLE = "Schedulable"
    UNSCHEDULABLE = "Unschedulable"
    PENDING_REBOOT = "UnschedulablePendingReboot"
    PENDING_REPLACEMENT = "UnschedulablePendingReplacement"


@dataclass(frozen=True)
class MarkFact:
    """Why a node carries (or lost) its mark: one decision of the coordinator.

    ``id`` is minted once per decision and travels with the mark (on Kubernetes, in a node
    annotation), so every attempt, replay or new leader finishing the same decision writes
    the same condition text and the same Event, never a second one. ``reason`` is the Event
    and condition reason (``GPUFault``, ``NodeMarkedForRecovery``, ``NodeRecovered``),
    ``message`` the fault as first described, ``at`` the decision's time (Unix seconds).
    ``fault`` names the fault the agent found (``XID 79 on GPU 2``) when the decision is one
    (empty otherwise): Slurm's drain reason shows it.
    """

    reason: str
    message: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    at: float = field(default_factory=time.time)
    fault: str = ""


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
    # the decision behind the node's current gpuwarden mark, as the cluster recorded it
    fact: MarkFact | None = None
    # GPUs the cluster's scheduler configures on the node (Slurm's GRES); None: not known
    gpus: int | None = None


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    changed: bool
    detail: str = ""


class Actuator(Protocol):
    name: str

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        """Cordon (recording that we did), taint, label ``mark``, condition GPUHealthy=False
        with the fact's text, and exactly one Event per ``fact.id``. Idempotent: applying
        the same mark and fact again changes nothing and records no second Event, whatever
        an earlier, interrupted attempt got done."""
        ...

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        """Undo exactly what :meth:`mark_unhealthy` did; never uncordon a node that someone
        else cordoned. Idempotent, with the same one-Event-per-fact rule."""
        ...

    async def node_facts(self, node: str) -> NodeFacts: ...

    async def list_marked(self) -> list[NodeFacts]:
        """Nodes that carry gpuwarden's marks now: the cluster's side of a restart rebuild."""
        ...

    async def list_nodes(self) -> frozenset[str] | None:
        """Every node the cluster knows, or None when this back end keeps no inventory.
        Agents of nodes outside it never count toward the safety rules."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class NodeCatalog(Protocol):
    """A back end that can say, in one read, every node it knows with its facts (Slurm:
    one ``sinfo``). The coordinator's inventory then feeds the model the cluster's own GPU
    counts too, not only the node names of :meth:`Actuator.list_nodes`."""

    async def list_node_facts(self) -> list[NodeFacts] | None: ...
