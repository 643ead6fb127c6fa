"""Node lifecycle policy: what the coordinator should do about one node, now.

Pure: :func:`decide` reads a node (any object shaped like :class:`NodeView`, in practice
``coordinator.model.NodeRecord``), the cluster's facts about it and the time, and returns at
most one :class:`Transition`. It does no I/O and changes nothing; the caller passes the
transition through the safety gate (when :attr:`Transition.gated`), runs the actuator, and
applies it to the model.

States and how a node moves between them::

    healthy --silence--> suspect --grace + Ready False--> unschedulable
       |                    |  \\--agent back--> healthy
       +--fault-------------+--> unschedulable | pending-reboot | pending-replacement
                                   |  (new boot, no fault)
                                   v
                               recovering --healthy reports for recovery_stable_s--> healthy
    any --operator hold--> held (in service) / stays out (out of service)
    any --operator clear--> healthy

Choices this module makes (DESIGN.md "Safety rules" is binding on the rest):

- A fault is an ``unhealthy`` report. Its action picks the state: ``replace`` ->
  pending-replacement, ``reboot`` -> pending-reboot, anything weaker (``reset_gpu``,
  ``restart_app``, ``none``) -> unschedulable: the coordinator can neither reset a GPU nor
  restart someone's job, so it stops new work landing there and leaves the fix to a person or
  the job's owner. ``degraded`` never takes a node out (warn only), and neither does
  ``unknown``: a check that could not run proves nothing broken.
- A node that faults again within ``refault_window_s`` (24 h) of a reboot-class remediation
  (pending-reboot or pending-replacement), on a later boot, goes to pending-replacement.
- Out of service is left only by a new boot (a boot_id other than the one the node was taken
  out on) followed by ``recovery_stable_s`` of healthy reports, or by an operator clear.
  ``degraded`` reports count as healthy for the recovery clock (a degraded node is
  schedulable); ``unknown`` or ``unhealthy`` ones, and any gap in reporting, restart it.
- Out-of-service states only escalate automatically (unschedulable < pending-reboot <
  pending-replacement) on the same boot; nothing but recovery or a clear weakens them.
- ``held`` is the state of a node an operator put on hold while it was in service. It is
  sticky: no automatic transition leaves it, only a clear. A hold on a node that is already
  out keeps its state (so pending-replacement still says so) and only blocks its return.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from coordinator.actuators import NodeFacts, NodeMark
from coordinator.findings import SeenFinding, fault_summary
from gpuwarden_common.health import Action, Health


class Lifecycle(StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    UNSCHEDULABLE = "unschedulable"
    PENDING_REBOOT = "pending-reboot"
    PENDING_REPLACEMENT = "pending-replacement"
    RECOVERING = "recovering"
    HELD = "held"


IN_SERVICE = frozenset({Lifecycle.HEALTHY, Lifecycle.SUSPECT})
OUT_OF_SERVICE = frozenset(set(Lifecycle) - IN_SERVICE)
# the states a fault puts a node in, weakest first: escalation only moves right
FAULT_STATES = (Lifecycle.UNSCHEDULABLE, Lifecycle.PENDING_REBOOT, Lifecycle.PENDING_REPLACEMENT)
REBOOT_CLASS = frozenset({Lifecycle.PENDING_REBOOT, Lifecycle.PENDING_REPLACEMENT})
# health that lets a node serve work; the recovery clock runs only on these
SERVICEABLE = frozenset({Health.HEALTHY, Health.DEGRADED})

_MARKS: dict[Lifecycle, NodeMark] = {
    Lifecycle.HEALTHY: NodeMark.SCHEDULABLE,
    Lifecycle.UNSCHEDULABLE: NodeMark.UNSCHEDULABLE,
    Lifecycle.PENDING_REBOOT: NodeMark.PENDING_REBOOT,
    Lifecycle.PENDING_REPLACEMENT: NodeMark.PENDING_REPLACEMENT,
    # the reboot happened; the node stays cordoned while it proves itself
    Lifecycle.RECOVERING: NodeMark.UNSCHEDULABLE,
    Lifecycle.HELD: NodeMark.UNSCHEDULABLE,
}


class Reason(StrEnum):
    """Why a transition happens: a stable code for audit records, metrics and alerts."""

    AGENT_SILENT = "agent-silent"
    AGENT_BACK = "agent-back"
    SILENT_NOT_READY = "silent-and-not-ready"
    FAULT = "fault"
    FAULT_REBOOT = "fault-needs-reboot"
    FAULT_REPLACE = "fault-needs-replacement"
    FAULT_ESCALATED = "fault-escalated"
    REFAULT_AFTER_REBOOT = "refault-after-reboot"
    NEW_BOOT = "new-boot"
    RECOVERED = "recovered"
    OPERATOR_HOLD = "operator-hold"
    OPERATOR_CLEAR = "operator-clear"


_OPERATOR_REASONS = frozenset({Reason.OPERATOR_HOLD, Reason.OPERATOR_CLEAR})


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """``offline_grace_s`` is ``--offline-grace``, ``recovery_stable_s`` ``--recovery-stable``."""

    offline_grace_s: float = 60.0
    recovery_stable_s: float = 300.0
    refault_window_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        for name in ("offline_grace_s", "recovery_stable_s", "refault_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")


class NodeView(Protocol):
    """What :func:`decide` reads about a node. Times are the coordinator's clock."""

    @property
    def name(self) -> str: ...
    @property
    def lifecycle(self) -> Lifecycle: ...
    @property
    def agent_online(self) -> bool: ...
    @property
    def last_seen(self) -> float:
        """Last sign of life from the agent (any message but an offline status)."""
        ...

    @property
    def offline_since(self) -> float | None:
        """When the agent's offline status arrived; None while it is online."""
        ...

    @property
    def boot_id(self) -> str:
        """Boot of the latest state report: the boot ``health`` and ``action`` describe."""
        ...

    @property
    def health(self) -> Health: ...
    @property
    def action(self) -> Action: ...
    @property
    def healthy_since(self) -> float | None:
        """Start of the current unbroken run of serviceable reports on this boot."""
        ...

    @property
    def last_state_at(self) -> float:
        """When the latest state report arrived."""
        ...

    @property
    def out_boot_id(self) -> str | None:
        """The boot the node was taken out of service on; None while in service."""
        ...

    @property
    def last_reboot_remediation_at(self) -> float | None: ...
    @property
    def reboot_remediation_boot_id(self) -> str | None: ...
    @property
    def hold(self) -> bool: ...
    @property
    def clear_requested(self) -> bool: ...
    @property
    def seen_findings(self) -> tuple[SeenFinding, ...]:
        """The current findings, with when each was first seen: what a reason names."""
        ...


@dataclass(frozen=True, slots=True)
class Transition:
    """Move ``source`` -> ``target``. ``mark`` is what the actuator should apply; None means
    nothing changes on the cluster (suspect is the coordinator's own doubt, not an action).

    ``target`` may equal ``source`` (a node that rebooted and faulted again re-enters the
    same state on its new boot, and an operator clear of a healthy node re-applies
    Schedulable); the transition still has to be applied to the model.
    """

    node: str
    source: Lifecycle
    target: Lifecycle
    mark: NodeMark | None
    reason: Reason
    message: str

    @property
    def removes_from_service(self) -> bool:
        return self.source in IN_SERVICE and self.target in OUT_OF_SERVICE

    @property
    def returns_to_service(self) -> bool:
        return self.source in OUT_OF_SERVICE and self.target in IN_SERVICE

    @property
    def gated(self) -> bool:
        """True for a new automatic remediation: the safety gate must allow it first.
        Recoveries, escalations of nodes already out and operator actions are never gated."""
        return self.removes_from_service and self.reason not in _OPERATOR_REASONS


def mark_for(state: Lifecycle) -> NodeMark | None:
    """The ``gpuwarden.io/node-health`` label a node in ``state`` carries (None: no opinion)."""
    return _MARKS.get(state)


def is_silent(node: NodeView, now: float, config: LifecycleConfig) -> bool:
    """The agent said it went offline, or has not been heard for longer than the grace."""
    return not node.agent_online or now - node.last_seen > config.offline_grace_s


def silent_for(node: NodeView, now: float) -> float:
    """Seconds of known silence: since the offline status when there is one (an LWT arrives
    only after the broker's keepalive gives up), else since the last sign of life."""
    if not node.agent_online and node.offline_since is not None:
        return now - node.offline_since
    return now - node.last_seen


def decide(
    node: NodeView, facts: NodeFacts | None, now: float, config: LifecycleConfig
) -> Transition | None:
    """The one transition ``node`` should make now, or None to leave it as it is."""
    if node.clear_requested:
        return _move(node, Lifecycle.HEALTHY, Reason.OPERATOR_CLEAR, "cleared by an operator")
    if node.lifecycle is Lifecycle.HELD:
        return None
    if node.lifecycle in IN_SERVICE:
        return _decide_in_service(node, facts, now, config)
    return _decide_out_of_service(node, now, config)


def _decide_in_service(
    node: NodeView, facts: NodeFacts | None, now: float, config: LifecycleConfig
) -> Transition | None:
    if node.hold:
        return _move(node, Lifecycle.HELD, Reason.OPERATOR_HOLD, "held by an operator")
    fault = _fault(node, now, config)
    if fault is not None:
        return fault
    if not is_silent(node, now, config):
        if node.lifecycle is Lifecycle.SUSPECT:
            return _move(node, Lifecycle.HEALTHY, Reason.AGENT_BACK, "agent reporting again")
        return None
    if node.lifecycle is Lifecycle.HEALTHY:
        return _move(node, Lifecycle.SUSPECT, Reason.AGENT_SILENT, _silence_text(node, now))
    # Silence alone is what a broker or network fault looks like: only the node's own Ready
    # condition, from the cluster, turns a silent agent into a broken node.
    not_ready = facts is not None and facts.ready is False
    if not_ready and silent_for(node, now) >= config.offline_grace_s:
        return _move(
            node,
            Lifecycle.UNSCHEDULABLE,
            Reason.SILENT_NOT_READY,
            f"{_silence_text(node, now)} and the node is not Ready",
        )
    return None


def _decide_out_of_service(
    node: NodeView, now: float, config: LifecycleConfig
) -> Transition | None:
    fault = _fault(node, now, config)
    new_boot = node.out_boot_id is not None and node.boot_id != node.out_boot_id
    if node.lifecycle is Lifecycle.RECOVERING:
        if fault is not None:
            return fault
        if _stable(node, now, config) and not node.hold:
            return _move(
                node,
                Lifecycle.HEALTHY,
                Reason.RECOVERED,
                f"healthy for {config.recovery_stable_s:g}s on boot {node.boot_id}",
            )
        return None
    if new_boot:
        if fault is not None:
            return fault
        return _move(
            node, Lifecycle.RECOVERING, Reason.NEW_BOOT, f"came back on boot {node.boot_id}"
        )
    if fault is not None and _rank(fault.target) > _rank(node.lifecycle):
        return fault
    return None


def _fault(node: NodeView, now: float, config: LifecycleConfig) -> Transition | None:
    """The transition the node's latest report calls for, or None when it is no fault."""
    if node.health is not Health.UNHEALTHY:
        return None
    if node.action is Action.REPLACE:
        target, reason = Lifecycle.PENDING_REPLACEMENT, Reason.FAULT_REPLACE
    elif node.action is Action.REBOOT:
        target, reason = Lifecycle.PENDING_REBOOT, Reason.FAULT_REBOOT
    else:
        target, reason = Lifecycle.UNSCHEDULABLE, Reason.FAULT
    # "XID 79 on GPU 2 at 14:02 UTC" says what broke; the fallback is for a fault known
    # only from the health (a report whose findings were all cut, a restored node)
    text = fault_summary(node.seen_findings) or (
        f"agent reports {node.health.value}, action {node.action.value}"
    )
    if target is not Lifecycle.PENDING_REPLACEMENT and _refault(node, now, config):
        hours = config.refault_window_s / 3600
        return _move(
            node,
            Lifecycle.PENDING_REPLACEMENT,
            Reason.REFAULT_AFTER_REBOOT,
            f"{text} again within {hours:g}h of a reboot",
        )
    if node.lifecycle in FAULT_STATES and target is not node.lifecycle:
        reason = Reason.FAULT_ESCALATED
    return _move(node, target, reason, text)


def _refault(node: NodeView, now: float, config: LifecycleConfig) -> bool:
    at = node.last_reboot_remediation_at
    return (
        at is not None
        and now - at <= config.refault_window_s
        and node.boot_id != node.reboot_remediation_boot_id
    )


def _stable(node: NodeView, now: float, config: LifecycleConfig) -> bool:
    # The run must be covered by reports, not just elapsed time, and the agent still there.
    return (
        node.healthy_since is not None
        and node.health in SERVICEABLE
        and node.last_state_at - node.healthy_since >= config.recovery_stable_s
        and not is_silent(node, now, config)
    )


def _rank(state: Lifecycle) -> int:
    return FAULT_STATES.index(state) if state in FAULT_STATES else -1


def _move(node: NodeView, target: Lifecycle, reason: Reason, message: str) -> Transition:
    mark = mark_for(target)
    if target is Lifecycle.HEALTHY and node.lifecycle is Lifecycle.SUSPECT:
        mark = None  # suspect never touched the cluster, so there is nothing to undo
    return Transition(node.name, node.lifecycle, target, mark, reason, message)


def _silence_text(node: NodeView, now: float) -> str:
    if not node.agent_online:
        return f"agent offline for {silent_for(node, now):.0f}s"
    return f"agent not heard for {now - node.last_seen:.0f}s"
