from __future__ import annotations

from pathlib import Path

import pytest

from agent.checks import CHECK_NAMES, ChecksConfig, default_checks
from agent.checks.runner import CheckRunner
from agent.xid_table import XidTable
from gpuwarden_common.health import Action
from tests.sample_factories import sample, xid


def test_default_checks_build_every_listed_check_once() -> None:
    assert [c.name for c in default_checks()] == list(CHECK_NAMES)
    assert len(set(CHECK_NAMES)) == len(CHECK_NAMES)


def test_a_disabled_check_is_left_out() -> None:
    names = [c.name for c in default_checks(config=ChecksConfig(disabled=frozenset({"nvlink"})))]
    assert "nvlink" not in names
    assert len(names) == len(CHECK_NAMES) - 1


def test_disabling_an_unknown_check_is_an_error() -> None:
    with pytest.raises(ValueError, match="nvlnk"):
        default_checks(config=ChecksConfig(disabled=frozenset({"nvlnk"})))


def test_the_xid_check_uses_the_table_it_is_given(tmp_path: Path) -> None:
    override = tmp_path / "xid.yaml"
    override.write_text("xids:\n  13:\n    severity: critical\n    action: reboot\n")
    (xid_check,) = [c for c in default_checks(XidTable.load(override)) if c.name == "xid"]
    (finding,) = xid_check.check(sample(xids=(xid(13),)))
    assert finding.action is Action.REBOOT


def test_a_healthy_eight_gpu_node_yields_no_findings_over_many_polls() -> None:
    runner = CheckRunner(default_checks())
    try:
        for step in range(20):
            results = runner.run(sample(ts=1000.0 + 10 * step, gpus_expected=8))
            assert [f for r in results for f in r.findings] == []
    finally:
        runner.close()
