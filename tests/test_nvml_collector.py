"""The NVML collector, run against the fake pynvml module."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pynvml
import pytest

from agent.nvml_collector import (
    CLOCK_EVENT_REASONS,
    CollectorBusyError,
    GpuCollector,
    NvmlUnavailable,
    decode_clock_event_reasons,
)
from agent.sim.fake_pynvml import MODEL_NAME, FakeHandle, FakeNvml
from gpuwarden_common.wire import GpuState


def _no_names(pid: int) -> str | None:
    return None


@pytest.fixture
def fake() -> FakeNvml:
    return FakeNvml(gpus=4, seed=7)


@pytest.fixture
def collector(fake: FakeNvml) -> Iterator[GpuCollector]:
    c = GpuCollector(fake, process_name=_no_names)
    c.start()
    yield c
    c.shutdown()


def _by_index(states: tuple[GpuState, ...]) -> dict[int, GpuState]:
    return {s.index: s for s in states}


# -- a healthy node -------------------------------------------------------------------------


def test_a_healthy_read_fills_every_field_of_every_gpu(collector: GpuCollector) -> None:
    states, errors = collector.collect()

    assert errors == ()
    assert [s.index for s in states] == [0, 1, 2, 3]
    for s in states:
        assert not s.lost
        assert s.uuid.startswith("GPU-")
        assert s.name == MODEL_NAME
        assert s.serial
        assert s.pci_bus_id.endswith(":00.0")
        for name in (
            "utilization_gpu_pct",
            "utilization_memory_pct",
            "memory_used_bytes",
            "memory_total_bytes",
            "temperature_c",
            "power_draw_w",
            "power_limit_w",
            "clock_sm_mhz",
            "clock_mem_mhz",
            "ecc_enabled",
            "row_remap",
        ):
            assert getattr(s, name) is not None, name
        assert None not in msgspec.structs.asdict(s.ecc).values()
        assert None not in msgspec.structs.asdict(s.pcie).values()
        assert (s.nvlink.links_total, s.nvlink.links_up) == (18, 18)
        assert s.processes and all(p.used_memory_bytes for p in s.processes)
        assert s.retired_pages is None  # the GPU remaps rows instead


def test_power_is_reported_in_watts(collector: GpuCollector) -> None:
    states, _ = collector.collect()

    assert states[0].power_limit_w == 700.0


def test_process_names_come_from_the_name_lookup(fake: FakeNvml) -> None:
    c = GpuCollector(fake, process_name=lambda pid: f"proc-{pid}")
    c.start()

    states, _ = c.collect()

    assert all(p.name == f"proc-{p.pid}" for p in states[0].processes)


def test_driver_version_and_identities_are_known_after_start(collector: GpuCollector) -> None:
    assert collector.driver_version == "550.90.07"
    assert [i.index for i in collector.identities] == [0, 1, 2, 3]
    assert collector.expected_gpus == 4


def test_a_kernel_pci_id_maps_to_the_gpu_index(collector: GpuCollector) -> None:
    # the fake puts GPU 1 at 00000000:64:00.0, which the kernel writes as 0000:64:00
    assert collector.index_for_pci("0000:64:00") == 1
    assert collector.index_for_pci("0000:ff:00") is None
    assert collector.index_for_pci("not a bus id") is None


# -- memory health switches -----------------------------------------------------------------


def test_an_uncorrectable_ecc_error_raises_volatile_and_aggregate_counts(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    fake.inject(2, "ecc_dbe")

    states = _by_index(collector.collect()[0])

    assert states[2].ecc.volatile_uncorrected == 1
    assert states[2].ecc.aggregate_uncorrected == 1
    assert states[1].ecc.volatile_uncorrected == 0


def test_a_pending_row_remap_is_reported(fake: FakeNvml, collector: GpuCollector) -> None:
    fake.inject(0, "remap_pending")

    remap = collector.collect()[0][0].row_remap

    assert remap is not None
    assert remap.pending and remap.uncorrectable == 1 and not remap.failure


def test_a_row_remap_failure_is_reported(fake: FakeNvml, collector: GpuCollector) -> None:
    fake.inject(0, "remap_failure")

    remap = collector.collect()[0][0].row_remap

    assert remap is not None and remap.failure


def test_without_row_remapping_retired_pages_are_read_instead(fake: FakeNvml) -> None:
    fake.set_unsupported(["nvmlDeviceGetRemappedRows"])
    c = GpuCollector(fake, process_name=_no_names)
    c.start()
    fake.inject(1, "ecc_dbe")

    states = _by_index(c.collect()[0])

    assert states[1].row_remap is None
    assert states[1].retired_pages is not None
    assert states[1].retired_pages.double_bit == 1
    assert states[1].retired_pages.pending
    assert states[0].retired_pages is not None and states[0].retired_pages.double_bit == 0


def test_clear_resets_volatile_ecc_counts_but_keeps_aggregate_ones(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    fake.inject(0, "ecc_dbe")
    fake.inject(0, "clear")

    ecc = collector.collect()[0][0].ecc

    assert (ecc.volatile_uncorrected, ecc.aggregate_uncorrected) == (0, 1)


# -- clocks and links -----------------------------------------------------------------------


def test_a_thermal_fault_reports_thermal_clock_event_reasons(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    fake.inject(3, "thermal")

    gpu = _by_index(collector.collect()[0])[3]

    assert gpu.temperature_c is not None and gpu.temperature_c >= 90
    assert {"sw_thermal_slowdown", "hw_thermal_slowdown"} <= set(gpu.clock_event_reasons)


def test_an_old_driver_without_clocks_event_reasons_uses_throttle_reasons(
    fake: FakeNvml,
) -> None:
    fake.set_missing(["nvmlDeviceGetCurrentClocksEventReasons"])
    c = GpuCollector(fake, process_name=_no_names)
    c.start()
    fake.inject(0, "thermal")

    gpu = c.collect()[0][0]

    assert "hw_thermal_slowdown" in gpu.clock_event_reasons
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] >= 1


def test_the_clock_event_reason_table_matches_pynvml() -> None:
    for bit, name in CLOCK_EVENT_REASONS:
        constant = "nvmlClocksEventReason" + "".join(w.capitalize() for w in name.split("_"))
        assert getattr(pynvml, constant) == bit, name


def test_unknown_clock_event_bits_are_kept_by_value() -> None:
    assert decode_clock_event_reasons(0x1 | 0x8000) == ["gpu_idle", "other_0x8000"]


def test_a_link_that_goes_down_counts_one_link_fewer_up(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    fake.inject(1, "nvlink_down")

    nvlink = _by_index(collector.collect()[0])[1].nvlink

    assert (nvlink.links_total, nvlink.links_up) == (18, 17)
    assert nvlink.recovery_errors == 1


def test_a_gpu_without_nvlink_reports_no_links() -> None:
    fake = FakeNvml(gpus=1, nvlinks=0)
    c = GpuCollector(fake, process_name=_no_names)
    c.start()

    states, errors = c.collect()

    assert errors == ()
    assert states[0].nvlink.links_total == 0


# -- lost GPUs ------------------------------------------------------------------------------


def test_a_gpu_lost_mid_run_is_marked_lost_and_the_others_still_read(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    collector.collect()
    fake.inject(2, "gpu_lost")

    states, errors = collector.collect()

    by_index = _by_index(states)
    assert by_index[2].lost
    assert [s.index for s in states if not s.lost] == [0, 1, 3]
    assert all(s.temperature_c is not None for s in states if not s.lost)
    assert [(e.gpu_index, e.lost) for e in errors] == [(2, True)]


def test_a_lost_gpu_keeps_the_identity_seen_at_start(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    before = collector.collect()[0][2]
    fake.inject(2, "gpu_lost")

    after = collector.collect()[0][2]

    assert (after.uuid, after.serial, after.pci_bus_id) == (
        before.uuid,
        before.serial,
        before.pci_bus_id,
    )


def test_a_lost_gpu_reads_again_after_it_comes_back(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    fake.inject(0, "gpu_lost")
    collector.collect()
    fake.inject(0, "clear")

    states, errors = collector.collect()

    assert not states[0].lost and errors == ()


def test_reset_required_also_means_lost(fake: FakeNvml, collector: GpuCollector) -> None:
    def reset_required(handle: Any, sensor: int) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_RESET_REQUIRED)

    fake.nvmlDeviceGetTemperature = reset_required  # type: ignore[method-assign]

    states, _ = collector.collect()

    assert all(s.lost for s in states)


def test_a_gpu_count_below_the_expected_count_reports_the_missing_gpu_lost() -> None:
    fake = FakeNvml(gpus=3)
    c = GpuCollector(fake, expected_gpus=4, process_name=_no_names)
    c.start()

    states, errors = c.collect()

    assert [(s.index, s.lost) for s in states] == [(0, False), (1, False), (2, False), (3, True)]
    assert [(e.gpu_index, e.lost) for e in errors] == [(3, True)]


def test_a_gpu_that_drops_out_of_the_count_mid_run_is_reported_lost() -> None:
    class Shrinking(FakeNvml):
        gone: str | None = None

        def nvmlDeviceGetCount(self) -> int:  # noqa: N802
            return super().nvmlDeviceGetCount() - (1 if self.gone else 0)

        def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeHandle:  # noqa: N802
            if uuid == self.gone:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return super().nvmlDeviceGetHandleByUUID(uuid)

    fake = Shrinking(gpus=3)
    c = GpuCollector(fake, process_name=_no_names)
    c.start()
    fake.gone = c.identities[1].uuid

    states, _ = c.collect()

    assert [s.index for s in states if s.lost] == [1]


def test_a_gpu_that_is_lost_at_start_is_reported_lost() -> None:
    fake = FakeNvml(gpus=2)
    fake.inject(1, "gpu_lost")
    c = GpuCollector(fake, process_name=_no_names)
    c.start()

    states, _ = c.collect()

    assert [s.lost for s in states] == [False, True]


# -- errors that are not loss ---------------------------------------------------------------


def test_unsupported_calls_become_none_and_are_not_retried(fake: FakeNvml) -> None:
    fake.set_unsupported(["nvmlDeviceGetPowerUsage", "nvmlDeviceGetEccMode"])
    c = GpuCollector(fake, process_name=_no_names)
    c.start()

    for _ in range(3):
        states, errors = c.collect()

    assert errors == ()
    assert all(s.power_draw_w is None and s.ecc_enabled is None for s in states)
    assert all(s.power_limit_w == 700.0 for s in states)
    # once per GPU, on the first pass only
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 4
    assert fake.calls["nvmlDeviceGetEccMode"] == 4
    assert c.unsupported()[0] == ("ecc_mode", "power_draw")


def test_ecc_and_pcie_counts_come_from_one_batched_field_read(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    collector.collect()

    assert fake.calls["nvmlDeviceGetFieldValues"] == 4
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 0
    assert fake.calls["nvmlDeviceGetPcieReplayCounter"] == 0


def test_an_unsupported_field_falls_back_to_its_single_call_once(fake: FakeNvml) -> None:
    fake.set_unsupported(["NVML_FI_DEV_PCIE_REPLAY_COUNTER"])
    c = GpuCollector(fake, process_name=_no_names)
    c.start()

    c.collect()
    states, _ = c.collect()

    assert all(s.pcie.replay_count == 0 for s in states)
    assert fake.calls["nvmlDeviceGetPcieReplayCounter"] == 8  # 4 GPUs x 2 passes


def test_without_batched_field_reads_single_calls_give_the_same_counts(fake: FakeNvml) -> None:
    fake.set_unsupported(["nvmlDeviceGetFieldValues"])
    c = GpuCollector(fake, process_name=_no_names)
    c.start()
    fake.inject(0, "ecc_dbe")
    fake.inject(0, "nvlink_down")

    c.collect()
    gpu = c.collect()[0][0]

    assert gpu.ecc.aggregate_uncorrected == 1
    assert gpu.nvlink.recovery_errors == 1
    assert fake.calls["nvmlDeviceGetFieldValues"] == 4  # tried once per GPU, then not again


def test_an_error_on_one_field_leaves_it_none_and_the_rest_read(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    def no_permission(handle: Any, sensor: int) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    fake.nvmlDeviceGetTemperature = no_permission  # type: ignore[method-assign]

    states, errors = collector.collect()

    assert all(s.temperature_c is None and not s.lost for s in states)
    assert all(s.power_draw_w is not None for s in states)
    assert {(e.what, e.lost) for e in errors} == {("temperature", False)}
    assert len(errors) == 4


def test_an_unknown_error_on_a_gpu_that_still_answers_is_a_field_error(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    def unknown(handle: Any) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    fake.nvmlDeviceGetPowerUsage = unknown  # type: ignore[method-assign]

    states, errors = collector.collect()

    assert not any(s.lost for s in states)
    assert {e.what for e in errors} == {"power_draw"}


def test_an_unknown_error_on_a_gpu_that_no_longer_answers_means_lost(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    real_memory_info = fake.nvmlDeviceGetMemoryInfo

    def unknown(handle: FakeHandle, *args: Any) -> Any:
        if handle.index == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
        return real_memory_info(handle)

    fake.nvmlDeviceGetMemoryInfo = unknown  # type: ignore[method-assign]

    states, _ = collector.collect()

    assert [s.index for s in states if s.lost] == [1]


def test_a_second_collect_while_one_is_stuck_in_the_driver_is_refused(
    fake: FakeNvml, collector: GpuCollector
) -> None:
    entered, release = threading.Event(), threading.Event()
    real = fake.nvmlDeviceGetTemperature

    def hang(handle: Any, sensor: int) -> Any:
        entered.set()
        release.wait(10)
        return real(handle, sensor)

    fake.nvmlDeviceGetTemperature = hang  # type: ignore[method-assign]
    stuck = threading.Thread(target=collector.collect)
    stuck.start()
    try:
        assert entered.wait(10)
        with pytest.raises(CollectorBusyError):
            collector.collect()
    finally:
        release.set()
        stuck.join(10)


# -- start ----------------------------------------------------------------------------------


def test_nvml_init_failure_gives_nvml_unavailable_with_one_line() -> None:
    collector = GpuCollector(FakeNvml(fail_init=True))

    with pytest.raises(NvmlUnavailable) as raised:
        collector.start()

    message = str(raised.value)
    assert "\n" not in message
    assert "libnvidia-ml.so.1" in message
    assert "--gpu-backend sim" in message


def test_a_node_where_nvml_sees_no_gpus_is_unavailable() -> None:
    with pytest.raises(NvmlUnavailable, match="no GPUs"):
        GpuCollector(FakeNvml(gpus=0)).start()


def test_shutdown_releases_nvml(fake: FakeNvml) -> None:
    c = GpuCollector(fake)
    c.start()

    c.shutdown()

    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
