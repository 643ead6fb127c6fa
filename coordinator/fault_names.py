"""The name of the fault behind a decision, as an operator would say it: ``XID 79 on GPU 2``.

A lifecycle transition explains itself in the coordinator's terms ("agent reports unhealthy,
action reboot"); a scheduler's one-line record of the node (Slurm's drain reason) should say
what broke. The newest word wins: a critical fault event newer than the node's latest report
(events are sent at once, the report that reflects them a moment later), else the report's
critical finding that calls for the strongest action. Pure.
"""

from __future__ import annotations

import re

from coordinator.lifecycle import Reason, Transition
from coordinator.model import NodeRecord
from gpuwarden_common.health import Severity, action_rank

# decisions that a fault caused; the others (a new boot, an operator, silence) name no fault
FAULT_REASONS = frozenset({
    Reason.FAULT, Reason.FAULT_REBOOT, Reason.FAULT_REPLACE, Reason.FAULT_ESCALATED,
    Reason.REFAULT_AFTER_REBOOT,
})  # fmt: skip
_NUMBERED = re.compile(r"^([A-Za-z]+)-(\d+)$")  # XID-79 -> XID 79


def fault_name(code: str, gpu_index: int | None) -> str:
    numbered = _NUMBERED.match(code)
    name = f"{numbered[1]} {numbered[2]}" if numbered else code
    return name if gpu_index is None else f"{name} on GPU {gpu_index}"


def named_fault(record: NodeRecord) -> str:
    """The fault the node's latest word reports; empty when it names none."""
    event = record.last_event
    if event is not None and event.severity is Severity.CRITICAL and (
        event.at >= record.last_state_at
    ):
        return fault_name(event.code, event.gpu_index)
    critical = [f for f in record.findings if f.severity is Severity.CRITICAL]
    if not critical:
        return ""
    worst = max(critical, key=lambda f: action_rank(f.action))  # the first of equals
    return fault_name(worst.code, worst.gpu_index)


def fault_of(transition: Transition, record: NodeRecord) -> str:
    """``MarkFact.fault`` for a decision: the named fault when a fault caused it."""
    return named_fault(record) if transition.reason in FAULT_REASONS else ""
