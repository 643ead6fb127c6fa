from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.xid_table import XidHistory, XidTable, XidTableError
from gpuwarden_common.health import Action, Severity

WEEK_S = 7 * 86400.0
UUID = "GPU-aaaa"


def write(tmp_path: Path, text: str, name: str = "xid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_table_makes_xid_79_critical_sticky_with_action_reboot() -> None:
    rule = XidTable.load().rule(79)
    assert (rule.severity, rule.action, rule.sticky) == (Severity.CRITICAL, Action.REBOOT, True)


def test_default_table_treats_xids_13_31_43_45_as_transient_application_faults() -> None:
    table = XidTable.load()
    for code in (13, 31, 43, 45):
        rule = table.rule(code)
        assert (rule.severity, rule.action, rule.sticky) == (
            Severity.WARNING,
            Action.RESTART_APP,
            False,
        ), code


def test_default_table_makes_xid_48_double_bit_ecc_critical_and_sticky() -> None:
    rule = XidTable.load().rule(48)
    assert rule.severity is Severity.CRITICAL
    assert rule.sticky
    assert rule.action in {Action.RESET_GPU, Action.REBOOT}


def test_default_table_sends_gsp_errors_119_and_120_to_reboot() -> None:
    table = XidTable.load()
    assert {table.rule(119).action, table.rule(120).action} == {Action.REBOOT}


def test_an_unknown_xid_gets_a_conservative_warning_with_restart_app() -> None:
    rule = XidTable.load().rule(4242)
    assert (rule.severity, rule.action, rule.sticky) == (
        Severity.WARNING,
        Action.RESTART_APP,
        False,
    )
    assert "4242" in rule.description


def test_default_escalation_is_the_second_reboot_fault_within_seven_days() -> None:
    escalation = XidTable.load().escalation
    assert escalation.reboot_faults_before_replace == 2
    assert escalation.window_s == WEEK_S


def test_an_override_file_changes_code_94_and_leaves_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  94:\n    severity: critical\n    action: reset_gpu\n")
    default = XidTable.load()
    table = XidTable.load(path)
    assert (table.rule(94).severity, table.rule(94).action) == (
        Severity.CRITICAL,
        Action.RESET_GPU,
    )
    assert table.rule(94).description == default.rule(94).description
    assert table.rule(79) == default.rule(79)
    assert table.source == str(path)


def test_an_override_file_can_add_a_new_code(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "xids:\n  777:\n    description: Vendor fault\n    severity: critical\n"
        "    action: replace\n    sticky: true\n",
    )
    rule = XidTable.load(path).rule(777)
    assert (rule.description, rule.severity, rule.action, rule.sticky) == (
        "Vendor fault",
        Severity.CRITICAL,
        Action.REPLACE,
        True,
    )


def test_an_override_file_can_change_the_escalation(tmp_path: Path) -> None:
    path = write(tmp_path, "escalation:\n  reboot_faults_before_replace: 3\n  window_days: 1.5\n")
    escalation = XidTable.load(path).escalation
    assert (escalation.reboot_faults_before_replace, escalation.window_s) == (3, 1.5 * 86400)


def test_a_bad_severity_names_the_file_the_code_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  94:\n    severity: fatal\n")
    with pytest.raises(XidTableError) as caught:
        XidTable.load(path)
    assert (caught.value.path, caught.value.code, caught.value.field) == (str(path), 94, "severity")
    assert str(path) in str(caught.value)
    assert "xid 94" in str(caught.value)
    assert "'severity'" in str(caught.value)


def test_a_misspelt_field_is_an_error_not_silently_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  13:\n    sevirity: critical\n")
    with pytest.raises(XidTableError) as caught:
        XidTable.load(path)
    assert (caught.value.code, caught.value.field) == (13, "sevirity")


def test_a_new_code_without_a_description_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  900:\n    severity: warning\n")
    with pytest.raises(XidTableError) as caught:
        XidTable.load(path)
    assert (caught.value.code, caught.value.field) == (900, "description")


def test_sticky_must_be_a_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  13:\n    sticky: sometimes\n")
    with pytest.raises(XidTableError) as caught:
        XidTable.load(path)
    assert (caught.value.code, caught.value.field) == (13, "sticky")


def test_a_code_that_is_not_a_number_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "xids:\n  seventy-nine:\n    severity: warning\n")
    with pytest.raises(XidTableError, match="seventy-nine") as caught:
        XidTable.load(path)
    assert caught.value.field == "xids"


def test_a_bad_escalation_value_names_its_field(tmp_path: Path) -> None:
    path = write(tmp_path, "escalation:\n  window_days: -1\n")
    with pytest.raises(XidTableError) as caught:
        XidTable.load(path)
    assert caught.value.field == "escalation.window_days"


def test_a_file_that_is_not_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "xids: [unclosed\n")
    with pytest.raises(XidTableError, match="not valid YAML") as caught:
        XidTable.load(path)
    assert caught.value.path == str(path)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(XidTableError, match="cannot read") as caught:
        XidTable.load(path)
    assert caught.value.path == str(path)


def test_history_counts_a_fault_on_each_boot_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    assert XidHistory(path, boot_id="boot-1").record(UUID, 79, 1000.0, WEEK_S) == 1
    assert XidHistory(path, boot_id="boot-2").record(UUID, 79, 2000.0, WEEK_S) == 2


def test_history_counts_one_boot_once_however_many_faults(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    history = XidHistory(path, boot_id="boot-1")
    history.record(UUID, 79, 1000.0, WEEK_S)
    history.record(UUID, 119, 1001.0, WEEK_S)
    # an agent restart on the same boot is the same incident too
    assert XidHistory(path, boot_id="boot-1").record(UUID, 79, 1002.0, WEEK_S) == 1


def test_history_forgets_faults_older_than_the_window(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    XidHistory(path, boot_id="boot-1").record(UUID, 79, 1000.0, WEEK_S)
    assert XidHistory(path, boot_id="boot-2").record(UUID, 79, 1000.0 + WEEK_S + 1, WEEK_S) == 1


def test_history_keeps_gpus_apart(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    XidHistory(path, boot_id="boot-1").record("GPU-other", 79, 1000.0, WEEK_S)
    assert XidHistory(path, boot_id="boot-2").record(UUID, 79, 1001.0, WEEK_S) == 1


def test_a_corrupt_history_file_starts_afresh_and_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text("{not json")
    assert XidHistory(path, boot_id="boot-1").record(UUID, 79, 1000.0, WEEK_S) == 1
    assert json.loads(path.read_text())["faults"][0]["gpu_uuid"] == UUID


def test_history_without_a_path_keeps_nothing_between_instances() -> None:
    assert XidHistory(None, boot_id="boot-1").record(UUID, 79, 1000.0, WEEK_S) == 1
    assert XidHistory(None, boot_id="boot-2").record(UUID, 79, 2000.0, WEEK_S) == 1
