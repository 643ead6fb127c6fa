from __future__ import annotations

from agent.checks.gpu_lost import GpuLostCheck
from agent.sample import CollectError
from gpuwarden_common.health import Action, Severity
from tests.sample_factories import bus_fault, gpu, healthy_gpus, lost_error, sample


def test_a_lost_gpu_is_critical_with_action_reboot() -> None:
    node = sample((gpu(0), gpu(1, lost=True)))
    findings = GpuLostCheck().check(node)
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("GPU-LOST", Severity.CRITICAL, Action.REBOOT, 1)
    ]


def test_a_lost_gpu_stays_lost_when_it_reads_again() -> None:
    check = GpuLostCheck()
    check.check(sample((gpu(0, lost=True),)))
    assert [f.code for f in check.check(sample((gpu(0),)))] == ["GPU-LOST"]


def test_a_lost_read_error_marks_its_gpu_lost() -> None:
    findings = GpuLostCheck().check(sample(errors=(lost_error(3),)))
    assert [(f.code, f.gpu_index) for f in findings] == [("GPU-LOST", 3)]


def test_a_gpu_fallen_off_the_bus_is_critical_with_action_reboot() -> None:
    findings = GpuLostCheck().check(sample(bus_faults=(bus_fault(2),)))
    assert [(f.code, f.severity, f.action, f.gpu_index) for f in findings] == [
        ("GPU-FELL-OFF-BUS", Severity.CRITICAL, Action.REBOOT, 2)
    ]


def test_fewer_gpus_than_expected_is_a_critical_node_finding() -> None:
    findings = GpuLostCheck().check(sample(healthy_gpus(7), gpus_expected=8))
    assert [(f.code, f.severity, f.gpu_index) for f in findings] == [
        ("GPU-COUNT-LOW", Severity.CRITICAL, None)
    ]
    assert "7 of 8" in findings[0].message


def test_the_expected_count_of_gpus_is_nothing() -> None:
    assert GpuLostCheck().check(sample(healthy_gpus(8), gpus_expected=8)) == ()


def test_a_failed_collection_pass_makes_the_node_unknown_for_that_sample() -> None:
    check = GpuLostCheck()
    failed = CollectError(gpu_index=None, what="collect", error="NVML collection hung")
    (finding,) = check.check(sample(errors=(failed,)))
    assert (finding.code, finding.unknown, finding.gpu_index) == ("GPU-UNREADABLE", True, None)
    assert check.check(sample()) == ()


def test_one_unreadable_field_of_a_gpu_is_nothing() -> None:
    field_error = CollectError(gpu_index=2, what="power_draw", error="NVMLError_Unknown")
    assert GpuLostCheck().check(sample(errors=(field_error,))) == ()
