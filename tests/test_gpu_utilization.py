"""Utilization averaged over the interval from NVML's sample buffers, per GPU and per process,
with the instantaneous rates as the fallback (agent/nvml_usage.py, through the collector, on
the fake pynvml driven by a clock the test moves)."""

from __future__ import annotations

from collections.abc import Iterator

import pynvml
import pytest

from agent.nvml_collector import GpuCollector
from agent.nvml_usage import SampleMean, mean_of_samples
from agent.sim.fake_pynvml import FakeHandle, FakeNvml
from agent.sim.fake_usage import SAMPLE_PERIOD_US, FakeProcess
from gpuwarden_common.wire import GpuState, UtilizationSource

GIB = 1024**3
PERIOD_S = SAMPLE_PERIOD_US / 1e6


class StepClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def fake(clock: StepClock) -> FakeNvml:
    fake = FakeNvml(gpus=2, workloads=False, clock=clock)
    fake.start_process(0, FakeProcess(100, 10 * GIB, sm_share=0.75))
    fake.start_process(0, FakeProcess(101, 2 * GIB, sm_share=0.25))
    return fake


def collector_for(fake: FakeNvml) -> GpuCollector:
    c = GpuCollector(fake, process_name=lambda pid: None)
    c.start()
    return c


@pytest.fixture
def collector(fake: FakeNvml) -> Iterator[GpuCollector]:
    c = collector_for(fake)
    yield c
    c.shutdown()


def gpu0(collector: GpuCollector) -> GpuState:
    states, errors = collector.collect()
    assert errors == ()
    return states[0]


def test_utilization_is_the_mean_over_the_interval_not_the_latest_sample(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    fake.set_load(0, 100, 80)
    clock.advance(5)
    fake.set_load(0, 0, 0)  # idle at the moment of the read: an instant reading says 0
    clock.advance(5)

    gpu = gpu0(collector)

    assert gpu.utilization_source == UtilizationSource.SAMPLES
    assert gpu.utilization_gpu_pct == pytest.approx(50, abs=2)
    assert gpu.utilization_memory_pct == pytest.approx(40, abs=2)


def test_each_read_averages_only_the_samples_since_the_previous_one(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    fake.set_load(0, 100)
    clock.advance(10)
    gpu0(collector)
    fake.set_load(0, 20)
    clock.advance(10)

    assert gpu0(collector).utilization_gpu_pct == pytest.approx(20, abs=0.5)


def test_the_window_is_the_span_of_the_samples_averaged(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    clock.advance(10)
    gpu0(collector)
    clock.advance(10)

    assert gpu0(collector).utilization_window_s == pytest.approx(10, abs=2 * PERIOD_S)


def test_a_read_with_no_new_sample_falls_back_to_the_instant_rates_without_an_error(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    clock.advance(10)
    gpu0(collector)
    fake.set_load(0, 37)  # the same instant: the driver has no newer sample yet

    gpu = gpu0(collector)

    assert gpu.utilization_source == UtilizationSource.INSTANT
    assert gpu.utilization_gpu_pct == 37
    assert gpu.utilization_window_s is None


def test_samples_left_unused_by_a_fallback_count_in_the_next_read(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    real = fake.nvmlDeviceGetSamples

    def no_memory_samples(handle: FakeHandle, kind: int, since: int) -> object:
        if kind == pynvml.NVML_MEMORY_UTILIZATION_SAMPLES:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return real(handle, kind, since)

    fake.set_load(0, 100)
    clock.advance(5)
    fake.nvmlDeviceGetSamples = no_memory_samples  # type: ignore[method-assign]
    gpu0(collector)  # instant: the GPU samples it read are not used up
    fake.nvmlDeviceGetSamples = real  # type: ignore[method-assign]
    fake.set_load(0, 0)
    clock.advance(5)

    assert gpu0(collector).utilization_gpu_pct == pytest.approx(50, abs=2)


def test_without_sample_buffers_the_instant_rates_are_used_and_said(
    fake: FakeNvml, clock: StepClock
) -> None:
    fake.set_unsupported(["nvmlDeviceGetSamples"])
    c = collector_for(fake)
    fake.set_load(0, 64)

    for _ in range(3):
        clock.advance(10)
        gpu = gpu0(c)

    assert (gpu.utilization_source, gpu.utilization_gpu_pct) == (UtilizationSource.INSTANT, 64)
    assert fake.calls["nvmlDeviceGetSamples"] == 2  # once per GPU, then not again


def test_a_binding_without_sample_reads_uses_the_instant_rates() -> None:
    class OldBinding(FakeNvml):
        nvmlDeviceGetSamples = None  # type: ignore[assignment]  # noqa: N815

    fake = OldBinding(gpus=1, workloads=False)
    c = collector_for(fake)

    assert gpu0(c).utilization_source == UtilizationSource.INSTANT


# -- per process ----------------------------------------------------------------------------


def test_each_owner_gets_its_processes_utilization_since_the_previous_read(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    fake.set_load(0, 80, 40)
    clock.advance(10)

    (owner,) = gpu0(collector).owners  # attribution is off: one unknown owner for both

    assert owner.sm_util_pct == pytest.approx(80)  # 60 + 20
    assert owner.memory_util_pct == pytest.approx(40)
    assert owner.used_memory_bytes == 12 * GIB


def test_a_process_that_did_not_use_the_gpu_counts_zero(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    fake.set_load(0, 0, 0)
    clock.advance(10)

    (owner,) = gpu0(collector).owners

    assert owner.sm_util_pct == 0.0


def test_without_per_process_figures_owners_have_none_and_the_gpu_keeps_its_average(
    fake: FakeNvml, clock: StepClock
) -> None:
    fake.set_unsupported(["nvmlDeviceGetProcessUtilization"])
    c = collector_for(fake)
    clock.advance(10)

    gpu = gpu0(c)

    assert gpu.owners[0].sm_util_pct is None and gpu.owners[0].memory_util_pct is None
    assert gpu.utilization_source == UtilizationSource.SAMPLES


def test_an_idle_gpu_is_not_asked_for_per_process_figures(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    clock.advance(10)

    states, _ = collector.collect()

    assert states[1].owners == [] and states[1].processes == []
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1  # GPU 0 only


def test_with_no_sample_since_the_previous_read_per_process_figures_are_unknown_not_zero(
    fake: FakeNvml, clock: StepClock, collector: GpuCollector
) -> None:
    clock.advance(10)
    gpu0(collector)  # the buffers are read up to now: nothing newer until time passes

    gpu = gpu0(collector)

    assert gpu.utilization_source == UtilizationSource.INSTANT
    assert gpu.owners[0].sm_util_pct is None


# -- reading a sample buffer ----------------------------------------------------------------


def _buffer(values: list[int]) -> pynvml.c_nvmlSample_t:
    array = (pynvml.c_nvmlSample_t * len(values))()
    for i, (sample, value) in enumerate(zip(array, values, strict=True)):
        sample.timeStamp = 1_000_000 + i * SAMPLE_PERIOD_US
        sample.sampleValue.uiVal = value
    return array


def test_a_buffer_as_the_binding_returns_it_is_averaged_with_its_time_span() -> None:
    samples = _buffer([10, 20, 30, 40])[0:4]  # pynvml slices its array into a list

    mean = mean_of_samples(pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, samples)

    assert mean == SampleMean(25.0, 1_000_000, 1_000_000 + 3 * SAMPLE_PERIOD_US)


def test_samples_that_do_not_share_one_array_are_averaged_alike() -> None:
    loose = [_buffer([v])[0] for v in (10, 20, 30, 40)]
    loose[0].timeStamp = 1_000_000 + 9 * SAMPLE_PERIOD_US  # and out of time order

    mean = mean_of_samples(pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, loose)

    assert mean == SampleMean(25.0, 1_000_000, 1_000_000 + 9 * SAMPLE_PERIOD_US)


def test_samples_of_a_value_type_nvml_does_not_define_are_not_averaged() -> None:
    assert mean_of_samples(99, _buffer([10])[0:1]) is None
