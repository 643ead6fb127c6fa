from __future__ import annotations

import pytest

from agent.checks.debounce import Latch, StickyFindings, WindowedIncrease
from gpuwarden_common.health import Action, Finding, Severity


def finding(severity: Severity, action: Action) -> Finding:
    return Finding(check="t", severity=severity, code="X", message="m", action=action, gpu_index=0)


def test_a_latch_keeps_keys_apart() -> None:
    latch = Latch(raise_after=2, clear_after=2)
    latch.update(0, True)
    latch.update(1, False)
    assert (latch.update(0, True), latch.update(1, False)) == (True, False)


def test_a_latch_rejects_a_zero_poll_count() -> None:
    with pytest.raises(ValueError, match="raise_after"):
        Latch(raise_after=0, clear_after=1)


def test_the_first_reading_of_a_counter_is_its_baseline() -> None:
    assert WindowedIncrease(60.0).update("k", 0.0, 5000) == 0


def test_a_counter_rise_is_measured_from_the_oldest_reading_in_the_window() -> None:
    window = WindowedIncrease(60.0)
    window.update("k", 0.0, 10)
    window.update("k", 30.0, 40)
    assert window.update("k", 70.0, 100) == 60


def test_sticky_findings_escalate_but_never_soften() -> None:
    sticky = StickyFindings()
    sticky.add(finding(Severity.CRITICAL, Action.REBOOT))
    sticky.add(finding(Severity.WARNING, Action.RESTART_APP))
    assert [f.action for f in sticky.findings()] == [Action.REBOOT]
    sticky.add(finding(Severity.CRITICAL, Action.REPLACE))
    assert [f.action for f in sticky.findings()] == [Action.REPLACE]
