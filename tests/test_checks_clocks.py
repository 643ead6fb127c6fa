from __future__ import annotations

import pytest

from agent.checks.clocks import ClocksCheck, ClocksConfig, normal_reason
from gpuwarden_common.health import Severity
from tests.sample_factories import gpu, sample

CONFIG = ClocksConfig(raise_after_polls=2, clear_after_polls=2)


def test_an_unexplained_hardware_slowdown_held_two_polls_warns() -> None:
    slowed = sample((gpu(1, clock_event_reasons=["hw_slowdown"]),))
    check = ClocksCheck(CONFIG)
    check.check(slowed)
    assert [(f.code, f.severity, f.gpu_index) for f in check.check(slowed)] == [
        ("CLOCKS-SLOWDOWN", Severity.WARNING, 1)
    ]


def test_a_hardware_slowdown_explained_by_heat_is_left_to_the_thermal_check() -> None:
    hot = sample((gpu(0, clock_event_reasons=["hw_slowdown", "hw_thermal_slowdown"]),))
    check = ClocksCheck(CONFIG)
    assert [check.check(hot) for _ in range(3)] == [()] * 3


def test_idle_and_application_clock_reasons_are_normal() -> None:
    idle = sample((gpu(0, clock_event_reasons=["gpu_idle", "applications_clocks_setting"]),))
    check = ClocksCheck(CONFIG)
    assert [check.check(idle) for _ in range(3)] == [()] * 3


@pytest.mark.parametrize(
    "spelling",
    ["hw_slowdown", "HwSlowdown", "HW_SLOWDOWN", "nvmlClocksEventReasonHwSlowdown"],
)
def test_reason_names_compare_in_any_spelling(spelling: str) -> None:
    assert normal_reason(spelling) == "hwslowdown"
