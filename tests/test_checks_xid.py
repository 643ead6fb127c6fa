from __future__ import annotations

from pathlib import Path

from agent.checks.xid import XidCheck, XidConfig
from agent.xid_table import XidHistory, XidTable
from gpuwarden_common.health import Action, Finding, Health, Severity
from tests.sample_factories import sample, xid

HOLD_S = 300.0


def make_check(history: XidHistory | None = None, table: XidTable | None = None) -> XidCheck:
    return XidCheck(
        table or XidTable.load(),
        history or XidHistory(None),
        XidConfig(transient_hold_s=HOLD_S),
    )


def only(findings: tuple[Finding, ...]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def test_xid_79_makes_the_gpu_unhealthy_with_action_reboot() -> None:
    finding = only(make_check().check(sample(xids=(xid(79, gpu_index=3),))))
    assert finding.code == "XID-79"
    assert finding.gpu_index == 3
    assert finding.health is Health.UNHEALTHY
    assert finding.action is Action.REBOOT


def test_xid_79_stays_for_the_life_of_the_agent() -> None:
    check = make_check()
    check.check(sample(ts=1000.0, xids=(xid(79),)))
    later = check.check(sample(ts=1000.0 + 30 * 86400))
    assert [f.code for f in later] == ["XID-79"]


def test_xid_13_is_a_warning_with_restart_app() -> None:
    finding = only(make_check().check(sample(xids=(xid(13),))))
    assert (finding.severity, finding.action) == (Severity.WARNING, Action.RESTART_APP)


def test_xid_13_expires_after_the_hold_time() -> None:
    check = make_check()
    check.check(sample(ts=1000.0, xids=(xid(13),)))
    assert [f.code for f in check.check(sample(ts=1000.0 + HOLD_S - 1))] == ["XID-13"]
    assert check.check(sample(ts=1000.0 + HOLD_S)) == ()


def test_a_repeated_xid_13_holds_from_its_last_occurrence() -> None:
    check = make_check()
    check.check(sample(ts=1000.0, xids=(xid(13),)))
    check.check(sample(ts=1200.0, xids=(xid(13),)))
    assert [f.code for f in check.check(sample(ts=1200.0 + HOLD_S - 1))] == ["XID-13"]


def test_a_second_reboot_class_xid_on_the_same_gpu_after_a_reboot_escalates_to_replace(
    tmp_path: Path,
) -> None:
    path = tmp_path / "xid-history.json"
    first_boot = make_check(XidHistory(path, boot_id="boot-1"))
    assert only(first_boot.check(sample(ts=1000.0, xids=(xid(79),)))).action is Action.REBOOT
    second_boot = make_check(XidHistory(path, boot_id="boot-2"))
    finding = only(second_boot.check(sample(ts=90_000.0, xids=(xid(79),))))
    assert (finding.severity, finding.action) == (Severity.CRITICAL, Action.REPLACE)
    assert "replace" in finding.message


def test_a_repeat_on_the_same_boot_is_the_same_incident_and_stays_reboot(tmp_path: Path) -> None:
    check = make_check(XidHistory(tmp_path / "h.json", boot_id="boot-1"))
    check.check(sample(ts=1000.0, xids=(xid(79),)))
    finding = only(check.check(sample(ts=1010.0, xids=(xid(79, source="kmsg"),))))
    assert finding.action is Action.REBOOT


def test_a_reboot_class_xid_on_another_gpu_does_not_escalate(tmp_path: Path) -> None:
    path = tmp_path / "xid-history.json"
    make_check(XidHistory(path, boot_id="boot-1")).check(sample(xids=(xid(79, gpu_index=0),)))
    second = make_check(XidHistory(path, boot_id="boot-2"))
    assert only(second.check(sample(xids=(xid(79, gpu_index=1),)))).action is Action.REBOOT


def test_an_xid_naming_no_known_gpu_is_a_node_finding() -> None:
    event = xid(79, gpu_index=None, pci_bus_id="0000:99:00", source="kmsg")
    finding = only(make_check().check(sample(xids=(event,))))
    assert finding.gpu_index is None
    assert "0000:99:00" in finding.message


def test_a_code_set_to_ok_in_the_table_is_ignored(tmp_path: Path) -> None:
    override = tmp_path / "xid.yaml"
    override.write_text("xids:\n  43:\n    severity: ok\n")
    check = make_check(table=XidTable.load(override))
    assert check.check(sample(xids=(xid(43),))) == ()


def test_no_xids_mean_no_findings() -> None:
    assert make_check().check(sample()) == ()
