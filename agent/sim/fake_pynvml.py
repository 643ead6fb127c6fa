"""A stand-in for the ``pynvml`` module: simulated GPUs with scripted faults.

The real collector and XID watcher run on it unchanged, in tests and in the ``sim`` GPU
backend of the demo. It answers the same function names with the same shapes (the real
pynvml ctypes structures where they carry no driver pointers), and every constant and
``NVMLError_*`` class it exposes *is* pynvml's, so ``except nvml.NVMLError_GpuIsLost`` catches
the same thing on both. Functions it does not simulate are absent, as on an old binding.

Workloads are scripted too: processes start and end (each with the cgroup its /proc entry
shows, kept in :attr:`FakeNvml.proc`) and a GPU's load can be set from a moment on; NVML's
utilization sample buffers are made from that load (:mod:`agent.sim.fake_usage`).

Thread-safe: faults may be injected from any thread while the collector and watcher read.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import pynvml

from agent.sim.fake_gpu import (
    DRIVER_VERSION,
    MEM_CLOCK_MHZ,
    MEMORY_TOTAL_BYTES,
    MODEL_NAME,
    NVLINKS_PER_GPU,
    PCIE_GEN,
    PCIE_WIDTH,
    POWER_LIMIT_MW,
    SM_CLOCK_MHZ,
    SM_CLOCK_THROTTLED_MHZ,
    FakeGpu,
    FakeHandle,
    field_value,
    make_gpu,
)
from agent.sim.fake_proc import FakeProc
from agent.sim.fake_usage import (
    FakeProcess,
    SampleClock,
    process_samples,
    utilization_samples,
)
from agent.sim.workloads import demo_processes

FAULT_KINDS: Final = (
    "xid",
    "ecc_dbe",
    "remap_pending",
    "remap_failure",
    "gpu_lost",
    "thermal",
    "nvlink_down",
    "clear",
)
_THERMAL_REASONS = (
    pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonHwThermalSlowdown
)
# what tests and the demo import from here
__all__ = ["FAULT_KINDS", "MODEL_NAME", "FakeEventData", "FakeEventSet", "FakeHandle", "FakeNvml"]

@dataclass(frozen=True)
class FakeEventData:
    """The shape of pynvml's ``c_nvmlEventData_t`` (its ``device`` cannot hold a FakeHandle)."""

    device: FakeHandle
    eventType: int  # noqa: N815 - NVML's field names
    eventData: int  # noqa: N815
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


@dataclass
class FakeEventSet:
    registered: dict[int, int] = field(default_factory=dict)  # gpu index -> event mask
    queue: deque[FakeEventData] = field(default_factory=deque)
    freed: bool = False


class FakeNvml:
    """Simulated NVML with ``gpus`` H100s. ``seed`` (a node name, say) fixes UUIDs and serials.

    ``calls`` counts every simulated call by function name (tests use it to prove that an
    unsupported call is not retried). ``fail_init`` makes nvmlInit raise
    NVMLError_LibraryNotFound, as on a node without the driver. ``workloads`` starts the
    demo's pods on the GPUs (:mod:`agent.sim.workloads`), ``processes_per_gpu`` worker
    processes in each pod's main container; without it the GPUs start idle.
    ``clock`` (seconds) drives the load and the sample buffers.
    """

    def __init__(
        self,
        gpus: int = 8,
        *,
        seed: int | str = 0,
        nvlinks: int = NVLINKS_PER_GPU,
        fail_init: bool = False,
        workloads: bool = True,
        processes_per_gpu: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.RLock()
        self._events = threading.Condition(self._lock)
        self._gpus = [make_gpu(i, seed, nvlinks) for i in range(gpus)]
        self._fail_init = fail_init
        self._clock = clock
        self._t0 = clock()
        self._samples = SampleClock(base_us=int(time.time() * 1_000_000))
        self.proc = FakeProc()
        self._init_count = 0
        self._unsupported: set[str] = set()
        self._missing: set[str] = set()
        self._event_sets: list[FakeEventSet] = []
        self.calls: Counter[str] = Counter()
        if workloads:
            for g in self._gpus:
                for p in demo_processes(g.index, seed, processes_per_gpu):
                    self.start_process(g.index, p)

    # -- pynvml's constants and error classes, shared, not copied ---------------------------

    def __getattr__(self, name: str) -> Any:
        # only for names this class does not define: constants and exception classes, never
        # real functions (which would reach for the real library)
        value = getattr(pynvml, name, None)
        if value is not None and (
            not callable(value) or (isinstance(value, type) and issubclass(value, Exception))
        ):
            return value
        raise AttributeError(f"FakeNvml does not simulate {name!r}")

    # -- test and scenario controls ---------------------------------------------------------

    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def set_unsupported(self, names: Iterable[str]) -> None:
        """Make these functions raise NotSupported; ``NVML_FI_*`` names fail that field only."""
        with self._lock:
            self._unsupported |= set(names)

    def set_missing(self, names: Iterable[str]) -> None:
        """Make these functions raise FunctionNotFound, as an older driver does."""
        with self._lock:
            self._missing |= set(names)

    def start_process(self, gpu: int, process: FakeProcess) -> None:
        """Run ``process`` on ``gpu``; its cgroup shows in :attr:`proc` until it ends."""
        with self._lock:
            self._gpus[gpu].processes.append(process)
            self.proc.add(process.pid, process.cgroup)

    def end_process(self, pid: int) -> None:
        with self._lock:
            for g in self._gpus:
                g.processes = [p for p in g.processes if p.pid != pid]
            self.proc.remove(pid)

    def set_load(self, gpu: int, gpu_pct: float | None, memory_pct: float | None = None) -> None:
        """From now on (the fake's clock) ``gpu`` runs at these utilizations; ``gpu_pct``
        None returns it to its wave. Memory defaults to half the GPU figure."""
        with self._lock:
            self._gpus[gpu].load.set(self._now(), gpu_pct, memory_pct)

    def inject(self, gpu: int, fault: str, xid: int | None = None) -> None:
        if fault not in FAULT_KINDS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULT_KINDS)}")
        if not 0 <= gpu < len(self._gpus):
            raise ValueError(f"no GPU {gpu}: this fake has {len(self._gpus)}")
        if fault == "xid" and xid is None:
            raise ValueError("fault 'xid' needs the XID code")
        with self._lock:
            g = self._gpus[gpu]
            if fault == "xid":
                self._queue_xid(g, int(xid or 0))
            elif fault == "ecc_dbe":
                g.ecc_volatile[1] += 1
                g.ecc_aggregate[1] += 1
                # GPUs without row remapping retire the page instead, until the next reboot
                g.retired_dbe.append(0x1F000 + 0x40 * len(g.retired_dbe))
                g.retirement_pending = True
            elif fault == "remap_pending":
                g.remap_uncorrectable += 1
                g.remap_pending = True
            elif fault == "remap_failure":
                g.remap_failure = True
            elif fault == "gpu_lost":
                g.lost = True
                self._events.notify_all()
            elif fault == "thermal":
                g.thermal = True
            elif fault == "nvlink_down":
                self._take_a_link_down(g)
            else:
                self._clear(g)

    def _queue_xid(self, g: FakeGpu, xid: int) -> None:
        data = FakeEventData(
            device=FakeHandle(g.index),
            eventType=pynvml.nvmlEventTypeXidCriticalError,
            eventData=xid,
        )
        for es in self._event_sets:
            if es.registered.get(g.index, 0) & pynvml.nvmlEventTypeXidCriticalError:
                es.queue.append(data)
        self._events.notify_all()

    @staticmethod
    def _take_a_link_down(g: FakeGpu) -> None:
        for link, up in enumerate(g.nvlink_up):
            if up:
                g.nvlink_up[link] = False
                g.nvlink_errors[link][1] += 1  # the link tried to recover first
                return

    @staticmethod
    def _clear(g: FakeGpu) -> None:
        """What a GPU reset does: volatile state goes, persistent counters stay."""
        g.lost = False
        g.thermal = False
        g.nvlink_up = [True] * len(g.nvlink_up)
        g.ecc_volatile = [0, 0]
        g.remap_pending = False
        g.remap_failure = False
        g.retirement_pending = False

    # -- plumbing ---------------------------------------------------------------------------

    def _enter(self, name: str) -> None:
        """Count the call and apply the library-wide rules (initialised, supported)."""
        self.calls[name] += 1
        if self._init_count == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if name in self._missing:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def _device(self, name: str, handle: FakeHandle) -> FakeGpu:
        self._enter(name)
        if not isinstance(handle, FakeHandle) or not 0 <= handle.index < len(self._gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        g = self._gpus[handle.index]
        if g.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in self._unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g

    def _now(self) -> float:
        return self._clock() - self._t0

    def _utilization(self, g: FakeGpu) -> int:
        return g.load.at(self._now())[0]

    # -- library ----------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        with self._lock:
            self.calls["nvmlInit"] += 1
            if self._fail_init:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
            self._init_count += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        with self._lock:
            self._enter("nvmlShutdown")
            self._init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        with self._lock:
            self._enter("nvmlSystemGetDriverVersion")
            return DRIVER_VERSION

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        with self._lock:
            self._enter("nvmlDeviceGetCount")
            return len(self._gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetHandleByIndex", FakeHandle(index))
            return FakeHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeHandle:  # noqa: N802
        with self._lock:
            self._enter("nvmlDeviceGetHandleByUUID")
            for g in self._gpus:
                if g.uuid == uuid:
                    if g.lost:
                        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                    return FakeHandle(g.index)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    # -- identity ---------------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:  # noqa: N802
        with self._lock:
            return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetName", handle)
            return MODEL_NAME

    def nvmlDeviceGetSerial(self, handle: FakeHandle) -> str:  # noqa: N802
        with self._lock:
            return self._device("nvmlDeviceGetSerial", handle).serial

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            return self._device("nvmlDeviceGetIndex", handle).index

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetPciInfo", handle)
            info = pynvml.nvmlPciInfo_t()
            info.busId = g.bus_id.encode()  # bytes, as the real structure gives it
            info.busIdLegacy = g.bus_id[4:].encode()
            info.domain, info.bus, info.device = 0, g.bus, 0
            info.pciDeviceId = 0x233010DE
            return info

    # -- telemetry --------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetUtilizationRates", handle)
            util = pynvml.c_nvmlUtilization_t()
            util.gpu, util.memory = g.load.at(self._now())
            return util

    def nvmlDeviceGetSamples(  # noqa: N802
        self, handle: FakeHandle, sampling_type: int, timeStamp: int  # noqa: N803
    ) -> tuple[int, Any]:
        with self._lock:
            g = self._device("nvmlDeviceGetSamples", handle)
            kinds = (pynvml.NVML_GPU_UTILIZATION_SAMPLES, pynvml.NVML_MEMORY_UTILIZATION_SAMPLES)
            if sampling_type not in kinds:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # not simulated
            ticks = self._samples.ticks(self._now(), timeStamp)
            if not ticks:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            memory = sampling_type == pynvml.NVML_MEMORY_UTILIZATION_SAMPLES
            samples = utilization_samples(g.load, self._samples, ticks, memory=memory)
            return pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, samples[0 : len(ticks)]

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: FakeHandle, timeStamp: int  # noqa: N803
    ) -> list[Any]:
        with self._lock:
            g = self._device("nvmlDeviceGetProcessUtilization", handle)
            ticks = self._samples.ticks(self._now(), timeStamp)
            found = process_samples(g.load, self._samples, ticks, g.processes) if ticks else []
            if not found:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            return found

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle) -> Any:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetMemoryInfo", handle)
            memory = pynvml.c_nvmlMemory_t()
            memory.total = MEMORY_TOTAL_BYTES
            used = sum(p.used_bytes for p in g.processes)
            memory.used = min(MEMORY_TOTAL_BYTES, 512 * 1024**2 + used)
            memory.free = memory.total - memory.used
            return memory

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetTemperature", handle)
            if sensor != pynvml.NVML_TEMPERATURE_GPU:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if g.thermal:
                return 95
            return 34 + self._utilization(g) * 30 // 100

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetPowerUsage", handle)
            return 90_000 + self._utilization(g) * 5_400

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetEnforcedPowerLimit", handle)
            return POWER_LIMIT_MW

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetClockInfo", handle)
            if clock_type == pynvml.NVML_CLOCK_SM:
                return SM_CLOCK_THROTTLED_MHZ if g.thermal else SM_CLOCK_MHZ
            if clock_type == pynvml.NVML_CLOCK_MEM:
                return MEM_CLOCK_MHZ
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def _clock_reasons(self, name: str, handle: FakeHandle) -> int:
        g = self._device(name, handle)
        reasons = _THERMAL_REASONS if g.thermal else 0
        if self._utilization(g) < 5:
            reasons |= pynvml.nvmlClocksEventReasonGpuIdle
        return reasons

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            return self._clock_reasons("nvmlDeviceGetCurrentClocksEventReasons", handle)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            return self._clock_reasons("nvmlDeviceGetCurrentClocksThrottleReasons", handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
            return self._process_infos(g, graphics=False)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: FakeHandle) -> list[Any]:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetGraphicsRunningProcesses", handle)
            return self._process_infos(g, graphics=True)

    @staticmethod
    def _process_infos(g: FakeGpu, *, graphics: bool) -> list[Any]:
        """What the binding's _v3 readers return: friendly objects of c_nvmlProcessInfo_v3_t."""
        return [
            pynvml.nvmlFriendlyObject(
                {
                    "pid": p.pid,
                    "usedGpuMemory": p.used_bytes,
                    "gpuInstanceId": 0xFFFFFFFF,
                    "computeInstanceId": 0xFFFFFFFF,
                }
            )
            for p in g.processes
            if p.graphics == graphics
        ]

    # -- memory health ----------------------------------------------------------------------

    def nvmlDeviceGetEccMode(self, handle: FakeHandle) -> list[int]:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetEccMode", handle)
            return [pynvml.NVML_FEATURE_ENABLED, pynvml.NVML_FEATURE_ENABLED]

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: FakeHandle, error_type: int, counter_type: int
    ) -> int:
        with self._lock:
            g = self._device("nvmlDeviceGetTotalEccErrors", handle)
            counts = g.ecc_volatile if counter_type == pynvml.NVML_VOLATILE_ECC else g.ecc_aggregate
            return counts[1 if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else 0]

    def nvmlDeviceGetRemappedRows(self, handle: FakeHandle) -> tuple[int, int, int, int]:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetRemappedRows", handle)
            return (
                g.remap_correctable,
                g.remap_uncorrectable,
                int(g.remap_pending),
                int(g.remap_failure),
            )

    def nvmlDeviceGetRetiredPages(self, handle: FakeHandle, cause: int) -> list[int]:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetRetiredPages", handle)
            if cause == pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
                return list(g.retired_dbe)
            return list(g.retired_sbe)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetRetiredPagesPendingStatus", handle)
            return int(g.retirement_pending)

    # -- interconnect -----------------------------------------------------------------------

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetCurrPcieLinkGeneration", handle)
            return PCIE_GEN

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetMaxPcieLinkGeneration", handle)
            return PCIE_GEN

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetCurrPcieLinkWidth", handle)
            return PCIE_WIDTH

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetMaxPcieLinkWidth", handle)
            return PCIE_WIDTH

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            return self._device("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays

    def _link(self, name: str, handle: FakeHandle, link: int) -> FakeGpu:
        g = self._device(name, handle)
        if not g.nvlink_up:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # a PCIe card
        if not 0 <= link < len(g.nvlink_up):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return g

    def nvmlDeviceGetNvLinkState(self, handle: FakeHandle, link: int) -> int:  # noqa: N802
        with self._lock:
            g = self._link("nvmlDeviceGetNvLinkState", handle, link)
            up = g.nvlink_up[link]
            return int(pynvml.NVML_FEATURE_ENABLED if up else pynvml.NVML_FEATURE_DISABLED)

    def nvmlDeviceGetNvLinkErrorCounter(  # noqa: N802
        self, handle: FakeHandle, link: int, counter: int
    ) -> int:
        with self._lock:
            g = self._link("nvmlDeviceGetNvLinkErrorCounter", handle, link)
            if not 0 <= counter < 4:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return g.nvlink_errors[link][counter]

    # -- batched fields ---------------------------------------------------------------------

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: list[int]) -> Any:  # noqa: N802
        with self._lock:
            g = self._device("nvmlDeviceGetFieldValues", handle)
            values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
            now_us = int(time.time() * 1e6)
            for slot, field_id in zip(values, field_ids, strict=True):
                slot.fieldId = field_id
                slot.timestamp = now_us
                value = field_value(g, field_id, self._unsupported)
                if value is None:
                    slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                    continue
                slot.nvmlReturn = pynvml.NVML_SUCCESS
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = value
            return values

    # -- events -----------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> FakeEventSet:  # noqa: N802
        with self._lock:
            self._enter("nvmlEventSetCreate")
            es = FakeEventSet()
            self._event_sets.append(es)
            return es

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeHandle) -> int:  # noqa: N802
        with self._lock:
            self._device("nvmlDeviceGetSupportedEventTypes", handle)
            return int(
                pynvml.nvmlEventTypeXidCriticalError
                | pynvml.nvmlEventTypeDoubleBitEccError
                | pynvml.nvmlEventTypeSingleBitEccError
            )

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: FakeHandle, event_types: int, event_set: FakeEventSet
    ) -> None:
        with self._lock:
            g = self._device("nvmlDeviceRegisterEvents", handle)
            event_set.registered[g.index] = event_set.registered.get(g.index, 0) | event_types

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> FakeEventData:  # noqa: N802
        return self._wait("nvmlEventSetWait_v2", event_set, timeout_ms)

    def nvmlEventSetWait(self, event_set: FakeEventSet, timeout_ms: int) -> FakeEventData:  # noqa: N802
        return self._wait("nvmlEventSetWait", event_set, timeout_ms)

    def _wait(self, name: str, event_set: FakeEventSet, timeout_ms: int) -> FakeEventData:
        """Blocks on a condition variable, so an injected XID wakes the watcher at once."""
        deadline = time.monotonic() + timeout_ms / 1000
        with self._events:
            self._enter(name)
            while True:
                if event_set.freed:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
                if event_set.queue:
                    return event_set.queue.popleft()
                if any(self._gpus[i].lost for i in event_set.registered):
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
                self._events.wait(remaining)

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:  # noqa: N802
        with self._events:
            self._enter("nvmlEventSetFree")
            event_set.freed = True
            if event_set in self._event_sets:
                self._event_sets.remove(event_set)
            self._events.notify_all()
