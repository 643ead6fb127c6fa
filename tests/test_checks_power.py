from __future__ import annotations

from agent.checks.power import PowerCheck, PowerConfig
from gpuwarden_common.health import Severity
from tests.sample_factories import gpu, sample

CONFIG = PowerConfig(raise_after_polls=2, clear_after_polls=3)


def test_a_power_brake_held_two_polls_warns() -> None:
    braked = sample((gpu(4, clock_event_reasons=["hw_slowdown", "hw_power_brake_slowdown"]),))
    check = PowerCheck(CONFIG)
    assert check.check(braked) == ()
    assert [(f.code, f.severity, f.gpu_index) for f in check.check(braked)] == [
        ("POWER-BRAKE", Severity.WARNING, 4)
    ]


def test_the_software_power_cap_is_normal_under_load() -> None:
    capped = sample((gpu(0, clock_event_reasons=["sw_power_cap"]),))
    check = PowerCheck(CONFIG)
    assert [check.check(capped) for _ in range(5)] == [()] * 5
