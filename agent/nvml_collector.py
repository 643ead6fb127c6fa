"""Reads every GPU through NVML, one blocking pass at a time.

The collector takes the ``pynvml`` module (or :class:`agent.sim.fake_pynvml.FakeNvml`) as an
argument, so the same code runs on real GPUs, in tests and in the demo. It never aborts a pass:
a field that cannot be read becomes ``None`` with a :class:`~agent.sample.CollectError`; a GPU
that is gone becomes a ``GpuState(lost=True)``; calls a GPU does not support are remembered
and not made again (the rules of :mod:`agent.nvml_pass`). The reads themselves are grouped by
concern: identity, temperature, power and clocks here; memory health and interconnect in
:mod:`agent.nvml_health`; processes, their owners and utilization in :mod:`agent.gpu_work`.

:meth:`GpuCollector.collect` blocks in the driver; the daemon runs it in a worker thread with a
deadline. A pass that is still stuck in the driver makes the next call raise
:class:`CollectorBusyError` at once rather than pile up threads behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from agent.gpu_work import GpuWorkReader
from agent.kmsg import pci_key
from agent.nvml_health import GpuHealthReader
from agent.nvml_pass import GpuIdentity, GpuLostError, NvmlErrors, NvmlPass, Slot, text
from agent.proc_owners import ProcessTable, ProcSource, process_name
from agent.sample import CollectError
from gpuwarden_common.wire import Attribution, GpuState

log = structlog.get_logger(__name__)

_SIM_HINT = "Use --gpu-backend sim to try without a GPU"


class NvmlUnavailable(RuntimeError):
    """NVML cannot start. The message is one line: what is wrong and what to do."""


class CollectorBusyError(RuntimeError):
    """The previous pass is still inside the driver (a hung NVML call)."""


# nvmlClocksEventReason* bits (the same values as the older nvmlClocksThrottleReason* names)
CLOCK_EVENT_REASONS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)


def decode_clock_event_reasons(mask: int) -> list[str]:
    """NVML's clock-event bitmask -> names; bits this table does not know keep their value."""
    names = [name for bit, name in CLOCK_EVENT_REASONS if mask & bit]
    known = 0
    for bit, _ in CLOCK_EVENT_REASONS:
        known |= bit
    if mask & ~known:
        names.append(f"other_0x{mask & ~known:x}")
    return names


def explain_init_failure(nvml: Any, exc: BaseException) -> str:
    """One line for an operator: why NVML did not start and what to try."""
    kinds: tuple[tuple[str, str], ...] = (
        (
            "NVMLError_LibraryNotFound",
            "NVML library not found (libnvidia-ml.so.1): is the NVIDIA driver installed, and "
            "is this pod run with the NVIDIA container runtime?",
        ),
        (
            "NVMLError_DriverNotLoaded",
            "the NVIDIA kernel driver is not loaded: check `lsmod | grep nvidia` and the "
            "kernel log on the node",
        ),
        (
            "NVMLError_NoPermission",
            "no permission to open the NVIDIA devices (/dev/nvidia*): run the agent "
            "privileged or give it the devices",
        ),
        (
            "NVMLError_LibRmVersionMismatch",
            "the NVML library and the loaded kernel driver differ in version (driver upgraded "
            "without a reboot?): reboot the node or reload the nvidia module",
        ),
    )
    for class_name, advice in kinds:
        error_class = getattr(nvml, class_name, None)
        if isinstance(error_class, type) and isinstance(exc, error_class):
            return f"{advice} {_SIM_HINT}"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"NVML failed to initialise ({detail}). {_SIM_HINT}"


class GpuCollector:
    """Polls every GPU through ``nvml`` (the ``pynvml`` module or a compatible fake).

    ``expected_gpus``: how many GPUs this node should have (from the instance type, say);
    defaults to the count NVML reports at :meth:`start`. Indices below it that NVML does not
    show are reported lost. ``proc``: where to read which workload each GPU process belongs
    to (None: attribution off, every owner ``unknown``).
    """

    def __init__(
        self,
        nvml: Any,
        *,
        expected_gpus: int | None = None,
        process_name: Callable[[int], str | None] = process_name,
        proc: ProcSource | None = None,
    ) -> None:
        self.nvml = nvml
        self._expected = expected_gpus
        self._work = GpuWorkReader(ProcessTable(proc, process_name=process_name))
        self._slots: list[Slot] = []
        self._driver_version: str | None = None
        self._started = False
        self._lock = threading.Lock()
        self._kinds = NvmlErrors(nvml)
        self._health = GpuHealthReader(nvml, self._kinds)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Initialise NVML and learn the GPUs. Raises :class:`NvmlUnavailable`."""
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:
            raise NvmlUnavailable(explain_init_failure(nvml, exc)) from exc
        try:
            count = int(nvml.nvmlDeviceGetCount())
            self._driver_version = self._driver()
        except Exception as exc:
            self._shutdown_quietly()
            raise NvmlUnavailable(explain_init_failure(nvml, exc)) from exc
        if count == 0 and self._expected is None:
            self._shutdown_quietly()
            raise NvmlUnavailable(
                "NVML sees no GPUs: does this pod request nvidia.com/gpu or set "
                f"NVIDIA_VISIBLE_DEVICES=all? {_SIM_HINT}"
            )
        self._slots = [self._open_slot(i) for i in range(count)]
        if self._expected is None:
            self._expected = count
        self._started = True
        log.info(
            "nvml_started",
            gpus=count,
            expected=self._expected,
            driver=self._driver_version,
        )

    def shutdown(self) -> None:
        if self._started:
            self._started = False
            self._shutdown_quietly()

    def _shutdown_quietly(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception as exc:
            log.warning("nvml_shutdown_failed", error=str(exc))

    def _driver(self) -> str | None:
        try:
            return text(self.nvml.nvmlSystemGetDriverVersion())
        except Exception:
            return None

    def _open_slot(self, index: int) -> Slot:
        """A handle and identity for ``index``; a GPU that does not answer gets neither yet."""
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            log.warning("nvml_handle_failed", index=index, error=str(exc))
            return Slot(GpuIdentity(index), None)

        def read(function: str) -> str | None:
            try:
                return text(getattr(nvml, function)(handle))
            except Exception:
                return None

        try:
            pci_bus_id = text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        except Exception:
            pci_bus_id = ""
        identity = GpuIdentity(
            index=index,
            uuid=read("nvmlDeviceGetUUID") or "",
            name=read("nvmlDeviceGetName") or "",
            serial=read("nvmlDeviceGetSerial"),
            pci_bus_id=pci_bus_id,
        )
        return Slot(identity, handle)

    # -- what the rest of the agent asks ----------------------------------------------------

    @property
    def driver_version(self) -> str | None:
        return self._driver_version

    @property
    def expected_gpus(self) -> int:
        return self._expected if self._expected is not None else len(self._slots)

    @property
    def attribution(self) -> Attribution | None:
        """How GPU processes are attributed to workloads (settled by the first pass)."""
        return self._work.attribution

    @property
    def identities(self) -> tuple[GpuIdentity, ...]:
        return tuple(slot.identity for slot in self._slots)

    def unsupported(self) -> dict[int, tuple[str, ...]]:
        """Per GPU, the reads found unsupported and no longer made (for logs and debugging)."""
        return {
            slot.index: tuple(sorted(slot.unsupported))
            + tuple(f"field {f}" for f in sorted(slot.unsupported_fields))
            for slot in self._slots
        }

    def index_for_pci(self, bus_id: str) -> int | None:
        """The GPU at this PCI address, in any spelling (kernel or NVML)."""
        key = pci_key(bus_id)
        if key is None:
            return None
        for slot in self._slots:
            if slot.identity.pci_bus_id and pci_key(slot.identity.pci_bus_id) == key:
                return slot.index
        return None

    # -- one pass ---------------------------------------------------------------------------

    def collect(self) -> tuple[tuple[GpuState, ...], tuple[CollectError, ...]]:
        """Read every GPU once. Blocking; never raises for a GPU or field fault."""
        if not self._started:
            raise RuntimeError("GpuCollector.collect() before start()")
        if not self._lock.acquire(blocking=False):
            raise CollectorBusyError("the previous NVML pass has not returned (hung driver call?)")
        try:
            return self._collect()
        finally:
            self._lock.release()

    def _collect(self) -> tuple[tuple[GpuState, ...], tuple[CollectError, ...]]:
        errors: list[CollectError] = []
        gone = self._gone_since_start(errors)
        states: list[GpuState] = []
        for slot in self._slots:
            if slot.handle is None:
                retried = self._open_slot(slot.index)
                if retried.handle is None:
                    states.append(self._lost(slot, "handle", "no handle for this index", errors))
                    continue
                slot.identity, slot.handle = retried.identity, retried.handle
            if slot.index in gone:
                states.append(self._lost(slot, "device_count", gone[slot.index], errors))
                continue
            read = NvmlPass(self.nvml, self._kinds, slot, errors)
            try:
                states.append(self._read_gpu(read))
            except GpuLostError as lost:
                states.append(self._lost(slot, lost.what, lost.error, errors))
        known = {slot.index for slot in self._slots}
        for index in range(self.expected_gpus):
            if index not in known:
                message = f"NVML shows {len(self._slots)} GPUs, {self.expected_gpus} expected"
                states.append(self._lost(Slot(GpuIdentity(index), None), "count", message, errors))
        self._work.end_pass()
        return tuple(states), tuple(errors)

    def _gone_since_start(self, errors: list[CollectError]) -> dict[int, str]:
        """GPUs missing from NVML's count now; only looked up by UUID when the count fell."""
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
        except Exception as exc:
            errors.append(CollectError(None, "device_count", f"{type(exc).__name__}: {exc}"))
            return {}
        if count >= len(self._slots):
            return {}
        gone: dict[int, str] = {}
        for slot in self._slots:
            if not slot.identity.uuid:
                continue
            try:
                self.nvml.nvmlDeviceGetHandleByUUID(slot.identity.uuid)
            except Exception as exc:
                gone[slot.index] = f"no longer enumerated by NVML ({text(exc)})"
        return gone

    @staticmethod
    def _lost(slot: Slot, what: str, error: str, errors: list[CollectError]) -> GpuState:
        errors.append(CollectError(slot.index, what, error, lost=True))
        ident = slot.identity
        return GpuState(
            index=ident.index,
            uuid=ident.uuid,
            name=ident.name,
            serial=ident.serial,
            pci_bus_id=ident.pci_bus_id,
            lost=True,
        )

    def _read_gpu(self, read: NvmlPass) -> GpuState:
        nvml = self.nvml
        ident = read.slot.identity
        work = self._work.read(read)
        util = work.utilization
        memory = read.call("memory", "nvmlDeviceGetMemoryInfo")
        temperature = read.call(
            "temperature", "nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU
        )
        power_mw = read.count("power_draw", "nvmlDeviceGetPowerUsage")
        limit_mw = read.count("power_limit", "nvmlDeviceGetEnforcedPowerLimit")
        sm_clock = read.count("clock_sm", "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM)
        mem_clock = read.count("clock_mem", "nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_MEM)
        reasons = self._clock_event_reasons(read)
        ecc_mode = read.call("ecc_mode", "nvmlDeviceGetEccMode")
        health = self._health
        fields = health.fields(read)
        row_remap, retired = health.memory_repair(read)
        return GpuState(
            index=ident.index,
            uuid=ident.uuid,
            name=ident.name,
            serial=ident.serial,
            pci_bus_id=ident.pci_bus_id,
            utilization_gpu_pct=util.gpu_pct,
            utilization_memory_pct=util.memory_pct,
            utilization_source=util.source,
            utilization_window_s=util.window_s,
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_c=None if temperature is None else float(temperature),
            power_draw_w=None if power_mw is None else power_mw / 1000,
            power_limit_w=None if limit_mw is None else limit_mw / 1000,
            clock_sm_mhz=sm_clock,
            clock_mem_mhz=mem_clock,
            clock_event_reasons=[] if reasons is None else decode_clock_event_reasons(reasons),
            ecc_enabled=None if ecc_mode is None else ecc_mode[0] == nvml.NVML_FEATURE_ENABLED,
            ecc=health.ecc(read, fields),
            row_remap=row_remap,
            retired_pages=retired,
            pcie=health.pcie(read, fields),
            nvlink=health.nvlink(read, fields),
            processes=work.processes,
            owners=work.owners,
        )

    def _clock_event_reasons(self, read: NvmlPass) -> int | None:
        mask = read.call("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None and "clock_event_reasons" in read.slot.unsupported:
            # bindings and drivers before 12.2 only know the older name of the same call
            mask = read.call("clock_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        return None if mask is None else int(mask)
