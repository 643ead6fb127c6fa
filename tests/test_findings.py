"""A node's findings as the coordinator tracks them: first seen, count, and the one-line
reason an operator reads."""

from __future__ import annotations

from coordinator.findings import SeenFinding, after_event, after_report, describe, fault_summary
from gpuwarden_common.health import Action, Finding, Severity

AT_1402 = 1_767_276_120.0  # 2026-01-01 14:02:00 UTC


def xid79(gpu: int = 2) -> Finding:
    return Finding(check="xid", severity=Severity.CRITICAL, code="XID-79",
                   message="XID 79: GPU has fallen off the bus", action=Action.REBOOT,
                   gpu_index=gpu)  # fmt: skip


def seen(code: str, gpu: int | None, *, action: Action = Action.REBOOT, at: float = AT_1402,
         count: int = 1, severity: Severity = Severity.CRITICAL) -> SeenFinding:
    return SeenFinding(code=code, gpu_index=gpu, check="x", severity=severity, action=action,
                       message="", first_seen=at, count=count)  # fmt: skip


def test_a_finding_first_reported_now_is_first_seen_now_once() -> None:
    (found,) = after_report((), [xid79()], now=AT_1402)
    assert (found.code, found.gpu_index, found.first_seen, found.count) == (
        "XID-79", 2, AT_1402, 1,
    )


def test_a_finding_repeated_by_later_reports_keeps_its_first_seen_time_and_count() -> None:
    first = after_report((), [xid79()], now=AT_1402)
    (found,) = after_report(first, [xid79()], now=AT_1402 + 600)
    assert (found.first_seen, found.count) == (AT_1402, 1)


def test_a_finding_missing_from_the_next_report_is_gone() -> None:
    assert after_report(after_report((), [xid79()], now=AT_1402), [], now=AT_1402 + 10) == ()


def test_ok_findings_are_not_tracked() -> None:
    ok = Finding(check="thermal", severity=Severity.OK, code="THERMAL-OK", message="")
    assert after_report((), [ok], now=AT_1402) == ()


def test_each_fault_event_counts_one_occurrence_and_the_report_after_it_none() -> None:
    event = {"code": "XID-79", "gpu_index": 2, "check": "xid", "severity": Severity.CRITICAL,
             "action": Action.REBOOT, "message": "XID 79"}  # fmt: skip
    once = after_event((), **event, now=AT_1402)
    twice = after_event(once, **event, now=AT_1402 + 30)
    (found,) = after_report(twice, [xid79()], now=AT_1402 + 31)
    assert (found.first_seen, found.count) == (AT_1402, 2)


def test_findings_read_gpu_by_gpu_with_the_host_last() -> None:
    found = after_report((), [
        Finding(check="host", severity=Severity.WARNING, code="DISK-FULL", message=""),
        xid79(gpu=5), xid79(gpu=1),
    ], now=AT_1402)  # fmt: skip
    assert [f.gpu_index for f in found] == [1, 5, None]


def test_an_xid_reads_as_xid_number_gpu_and_time_of_day() -> None:
    assert describe(seen("XID-79", 2)) == "XID 79 on GPU 2 at 14:02 UTC"


def test_a_repeated_host_finding_says_the_host_and_how_many_times() -> None:
    assert describe(seen("DISK-FULL", None, count=3)) == (
        "DISK-FULL on the host at 14:02 UTC, 3 times"
    )


def test_the_reason_names_the_fault_that_calls_for_the_strongest_action() -> None:
    found = [seen("ECC-DBE", 5, action=Action.RESET_GPU, at=AT_1402 - 60),
             seen("XID-79", 2), seen("THERMAL", 1, severity=Severity.WARNING)]  # fmt: skip
    assert fault_summary(found) == "XID 79 on GPU 2 at 14:02 UTC and 1 other fault"


def test_the_earliest_of_equally_strong_faults_leads_the_reason() -> None:
    found = [seen("XID-79", 2, at=AT_1402 + 60), seen("XID-48", 4)]
    assert fault_summary(found) == "XID 48 on GPU 4 at 14:02 UTC and 1 other fault"


def test_without_a_critical_finding_there_is_no_fault_to_name() -> None:
    assert fault_summary([seen("THERMAL", 1, severity=Severity.WARNING)]) is None
