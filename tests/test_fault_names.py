"""The fault behind a decision, named as an operator would say it (Slurm's drain reason shows
it): the newest word wins, an event newer than the latest report, else the report."""

from __future__ import annotations

from coordinator.fault_names import fault_name, fault_of, named_fault
from coordinator.lifecycle import Lifecycle, Reason, Transition
from coordinator.model import LastEvent, NodeRecord
from gpuwarden_common.health import Action, Finding, Severity


def xid_finding(xid: int, gpu: int, action: Action = Action.REBOOT) -> Finding:
    return Finding(check="xid", severity=Severity.CRITICAL, code=f"XID-{xid}",
                   message=f"Xid {xid}", action=action, gpu_index=gpu)  # fmt: skip


def event(code: str, gpu: int | None, at: float) -> LastEvent:
    return LastEvent(code, Severity.CRITICAL, Action.REBOOT, gpu, at)


def test_an_xid_is_named_with_its_number_and_gpu() -> None:
    assert fault_name("XID-79", 2) == "XID 79 on GPU 2"


def test_other_codes_keep_their_name() -> None:
    assert fault_name("ECC-DBE", 0) == "ECC-DBE on GPU 0"
    assert fault_name("HOST-DISK-FULL", None) == "HOST-DISK-FULL"


def test_an_event_newer_than_the_latest_report_names_the_fault() -> None:
    record = NodeRecord("n1", last_state_at=10.0, last_event=event("XID-79", 2, at=11.0))
    assert named_fault(record) == "XID 79 on GPU 2"


def test_a_report_newer_than_the_event_names_its_strongest_finding() -> None:
    record = NodeRecord(
        "n1", last_state_at=12.0, last_event=event("XID-13", 0, at=11.0),
        findings=(xid_finding(13, 0, Action.RESTART_APP), xid_finding(79, 3)),
    )  # fmt: skip
    assert named_fault(record) == "XID 79 on GPU 3"


def test_a_node_with_nothing_critical_names_no_fault() -> None:
    assert named_fault(NodeRecord("n1")) == ""


def test_only_a_fault_decision_carries_the_fault() -> None:
    record = NodeRecord("n1", last_state_at=10.0, last_event=event("XID-79", 2, at=11.0))
    fault = Transition("n1", Lifecycle.HEALTHY, Lifecycle.PENDING_REBOOT, None,
                       Reason.FAULT_REBOOT, "agent reports unhealthy, action reboot")
    hold = Transition("n1", Lifecycle.HEALTHY, Lifecycle.HELD, None, Reason.OPERATOR_HOLD,
                      "held by an operator")  # fmt: skip
    assert (fault_of(fault, record), fault_of(hold, record)) == ("XID 79 on GPU 2", "")
