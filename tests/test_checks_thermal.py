from __future__ import annotations

from agent.checks.thermal import ThermalCheck, ThermalConfig
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Severity
from tests.sample_factories import gpu, sample

CONFIG = ThermalConfig(max_temperature_c=90.0, raise_after_polls=3, clear_after_polls=4)
HOT = sample((gpu(0, temperature_c=93.0, clock_event_reasons=["sw_thermal_slowdown"]),))
COOL = sample((gpu(0),))


def polls(check: ThermalCheck, *samples: NodeSample) -> list[bool]:
    return [bool(check.check(s)) for s in samples]


def test_thermal_slowdown_needs_three_consecutive_polls() -> None:
    assert polls(ThermalCheck(CONFIG), HOT, HOT, HOT) == [False, False, True]


def test_thermal_slowdown_is_a_warning_on_that_gpu() -> None:
    check = ThermalCheck(CONFIG)
    findings = [check.check(HOT) for _ in range(3)][-1]
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("THERMAL-SLOWDOWN", Severity.WARNING, Action.NONE, 0)
    ]


def test_thermal_slowdown_clears_only_after_four_clean_polls() -> None:
    check = ThermalCheck(CONFIG)
    polls(check, HOT, HOT, HOT)
    assert polls(check, COOL, COOL, COOL, COOL) == [True, True, True, False]


def test_alternating_samples_never_raise_a_warning() -> None:
    assert not any(polls(ThermalCheck(CONFIG), *[HOT, COOL] * 10))


def test_alternating_samples_never_clear_a_raised_warning() -> None:
    check = ThermalCheck(CONFIG)
    polls(check, HOT, HOT, HOT)
    assert all(polls(check, *[COOL, HOT] * 10))


def test_a_temperature_at_the_limit_counts_without_clock_events() -> None:
    hot = sample((gpu(0, temperature_c=90.0),))
    assert polls(ThermalCheck(CONFIG), hot, hot, hot)[-1]


def test_hardware_thermal_slowdown_counts_in_nvml_spelling() -> None:
    slowed = sample((gpu(0, temperature_c=70.0, clock_event_reasons=["HwThermalSlowdown"]),))
    assert polls(ThermalCheck(CONFIG), slowed, slowed, slowed)[-1]


def test_a_warm_gpu_below_the_limit_is_nothing() -> None:
    warm = sample((gpu(0, temperature_c=84.0, clock_event_reasons=["sw_power_cap"]),))
    assert not any(polls(ThermalCheck(CONFIG), *[warm] * 5))
