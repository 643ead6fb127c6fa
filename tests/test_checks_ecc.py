from __future__ import annotations

from agent.checks.ecc import EccCheck, EccConfig
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import EccCounts
from tests.sample_factories import gpu, sample

CONFIG = EccConfig(sbe_increase=100, sbe_window_s=600.0, sbe_clear_after_polls=3)


def counts(**fields: int | None) -> EccCounts:
    base: dict[str, int | None] = {
        "volatile_corrected": 0,
        "volatile_uncorrected": 0,
        "aggregate_corrected": 0,
        "aggregate_uncorrected": 0,
    }
    base.update(fields)
    return EccCounts(**base)


def poll(check: EccCheck, ts: float, **fields: int | None) -> list[str]:
    findings = check.check(sample((gpu(0, ecc=counts(**fields)),), ts=ts))
    return [f.code for f in findings]


def test_a_double_bit_error_is_critical_with_action_reset_gpu() -> None:
    findings = EccCheck(CONFIG).check(sample((gpu(2, ecc=counts(volatile_uncorrected=1)),)))
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("ECC-DBE", Severity.CRITICAL, Action.RESET_GPU, 2)
    ]


def test_a_double_bit_error_is_sticky_after_the_counter_resets() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_uncorrected=1)
    assert poll(check, 1010.0, volatile_uncorrected=0) == ["ECC-DBE"]


def test_a_double_bit_error_stays_reported_when_ecc_becomes_unreadable() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_uncorrected=1)
    unreadable = sample((gpu(0, lost=True, ecc_enabled=None),), ts=1010.0)
    assert check.is_supported(unreadable)
    assert [f.code for f in check.check(unreadable)] == ["ECC-DBE"]


def test_old_aggregate_double_bit_errors_alone_are_not_a_fault() -> None:
    check = EccCheck(CONFIG)
    assert poll(check, 1000.0, volatile_uncorrected=None, aggregate_uncorrected=4) == []


def test_a_rise_in_aggregate_double_bit_errors_is_a_fault_when_volatile_is_unreadable() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_uncorrected=None, aggregate_uncorrected=4)
    assert poll(check, 1010.0, volatile_uncorrected=None, aggregate_uncorrected=5) == ["ECC-DBE"]


def test_corrected_errors_rising_over_the_limit_within_the_window_warn() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_corrected=5)
    findings = check.check(sample((gpu(0, ecc=counts(volatile_corrected=106)),), ts=1300.0))
    assert [(f.code, f.severity) for f in findings] == [("ECC-SBE-RATE", Severity.WARNING)]


def test_corrected_errors_rising_under_the_limit_are_nothing() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_corrected=5)
    assert poll(check, 1300.0, volatile_corrected=105) == []


def test_corrected_errors_spread_wider_than_the_window_are_nothing() -> None:
    check = EccCheck(CONFIG)
    for step, value in enumerate((0, 60, 120, 180)):
        assert poll(check, 1000.0 + step * 400, volatile_corrected=value) == []


def test_the_corrected_rate_warning_clears_after_clean_polls_only() -> None:
    check = EccCheck(CONFIG)
    poll(check, 0.0, volatile_corrected=0)
    assert poll(check, 100.0, volatile_corrected=500) == ["ECC-SBE-RATE"]
    # from ts 700 the burst is outside the window: the third clean poll clears the warning
    assert [poll(check, ts, volatile_corrected=500) for ts in (700, 710, 720)] == [
        ["ECC-SBE-RATE"],
        ["ECC-SBE-RATE"],
        [],
    ]


def test_a_gpu_reset_that_zeroes_the_corrected_counter_is_not_a_rate() -> None:
    check = EccCheck(CONFIG)
    poll(check, 1000.0, volatile_corrected=5000)
    poll(check, 1010.0, volatile_corrected=0)
    assert poll(check, 1020.0, volatile_corrected=50) == []


def test_the_check_is_unsupported_where_no_gpu_has_ecc_enabled() -> None:
    node = sample((gpu(0, ecc_enabled=False), gpu(1, ecc_enabled=None)))
    assert not EccCheck(CONFIG).is_supported(node)
