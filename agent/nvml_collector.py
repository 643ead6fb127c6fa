"""Reads every GPU through NVML, one blocking pass at a time.

The collector takes the ``pynvml`` module (or :class:`agent.sim.fake_pynvml.FakeNvml`) as an
argument, so the same code runs on real GPUs, in tests and in the demo. It never aborts a pass:
a field that cannot be read becomes ``None`` with a :class:`~agent.sample.CollectError`; a GPU
that is gone becomes a ``GpuState(lost=True)``. Calls a GPU does not support are remembered
and not made again, since on a large node every wasted NVML call is paid every few seconds.

:meth:`GpuCollector.collect` blocks in the driver; the daemon runs it in a worker thread with a
deadline. A pass that is still stuck in the driver makes the next call raise
:class:`CollectorBusyError` at once rather than pile up threads behind it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog

from agent.gpu_work import GpuWorkReader
from agent.kmsg import pci_key
from agent.nvml_usage import union_value
from agent.proc_owners import ProcessTable, ProcSource
from agent.sample import CollectError
from gpuwarden_common.wire import (
    Attribution,
    EccCounts,
    GpuState,
    NvLink,
    Pcie,
    RetiredPages,
    RowRemap,
)

log = structlog.get_logger(__name__)

_SIM_HINT = "Use --gpu-backend sim to try without a GPU"
_RECORD = object()  # _Pass.call's default for NotFound: a failure like any other


class NvmlUnavailable(RuntimeError):
    """NVML cannot start. The message is one line: what is wrong and what to do."""


class CollectorBusyError(RuntimeError):
    """The previous pass is still inside the driver (a hung NVML call)."""


@dataclass(frozen=True)
class GpuIdentity:
    """What does not change while the GPU is on the bus; kept to name a GPU once it is lost."""

    index: int
    uuid: str = ""
    name: str = ""
    serial: str | None = None
    pci_bus_id: str = ""


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
    for class_name, text in kinds:
        error_class = getattr(nvml, class_name, None)
        if isinstance(error_class, type) and isinstance(exc, error_class):
            return f"{text} {_SIM_HINT}"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return f"NVML failed to initialise ({detail}). {_SIM_HINT}"


class _GpuLostError(Exception):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(f"{what}: {error}")
        self.what = what
        self.error = error


@dataclass
class _Slot:
    """One GPU index, across passes."""

    identity: GpuIdentity
    handle: Any | None
    unsupported: set[str] = field(default_factory=set)
    unsupported_fields: set[int] = field(default_factory=set)
    nvlinks: tuple[int, ...] | None = None  # links that exist; None until probed

    @property
    def index(self) -> int:
        return self.identity.index


# (what, field name in pynvml, single-call fallback arguments are derived from "what")
_ECC_FIELDS: tuple[tuple[str, str], ...] = (
    ("volatile_corrected", "NVML_FI_DEV_ECC_SBE_VOL_TOTAL"),
    ("volatile_uncorrected", "NVML_FI_DEV_ECC_DBE_VOL_TOTAL"),
    ("aggregate_corrected", "NVML_FI_DEV_ECC_SBE_AGG_TOTAL"),
    ("aggregate_uncorrected", "NVML_FI_DEV_ECC_DBE_AGG_TOTAL"),
)
_PCIE_REPLAY_FIELD = "NVML_FI_DEV_PCIE_REPLAY_COUNTER"
# NVLink totals over all links, and the per-link counter to sum where the total is missing
_NVLINK_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("crc_flit", "NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_CRC_FLIT"),
    ("crc_data", "NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_CRC_DATA"),
    ("replay", "NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_REPLAY"),
    ("recovery", "NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "NVML_NVLINK_ERROR_DL_RECOVERY"),
)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()[:256] or None
    except psutil.Error:
        return None  # another PID namespace, or the process already ended


class _Pass:
    """The calls of one pass on one GPU, with the error rules applied."""

    def __init__(self, collector: GpuCollector, slot: _Slot, errors: list[CollectError]) -> None:
        self._nvml = collector.nvml
        self._collector = collector
        self.slot = slot
        self.errors = errors

    @property
    def gpu_index(self) -> int:
        return self.slot.index

    def unsupported(self, what: str) -> bool:
        return what in self.slot.unsupported

    def call(self, what: str, function: str, *args: Any, not_found: object = _RECORD) -> Any:
        """The call's result, or None when unsupported (remembered) or failed (recorded).

        ``not_found``, when given, is returned for NVMLError_NotFound, which the calls that
        read "samples newer than" answer when there are none: no failure then.
        Raises :class:`_GpuLostError` when the GPU is gone: the pass on this GPU ends there.
        """
        slot = self.slot
        if what in slot.unsupported:
            return None
        fn: Callable[..., Any] | None = getattr(self._nvml, function, None)
        if fn is None:  # an older binding without this function
            slot.unsupported.add(what)
            return None
        c = self._collector
        try:
            return fn(slot.handle, *args)
        except c.unsupported_errors:
            slot.unsupported.add(what)
            return None
        except c.lost_errors as exc:
            raise _GpuLostError(what, _text(exc)) from None
        except c.not_found_errors as exc:
            if not_found is _RECORD:
                self.fail(what, exc)
                return None
            return not_found
        except c.unknown_errors as exc:
            # NVMLError_Unknown from a handle that answered before usually means the GPU
            # went away; one cheap call tells that apart from a single odd field
            if self._probe_fails():
                raise _GpuLostError(what, _text(exc)) from None
            self.fail(what, exc)
            return None
        except Exception as exc:
            self.fail(what, exc)
            return None

    def count(self, what: str, function: str, *args: Any) -> int | None:
        """:meth:`call` for a call that returns a number."""
        value = self.call(what, function, *args)
        return None if value is None else int(value)

    def fail(self, what: str, exc: BaseException | str) -> None:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.errors.append(CollectError(self.slot.index, what, error))

    def _probe_fails(self) -> bool:
        try:
            self._nvml.nvmlDeviceGetMemoryInfo(self.slot.handle)
        except Exception:
            return True
        return False


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
        process_name: Callable[[int], str | None] = _process_name,
        proc: ProcSource | None = None,
    ) -> None:
        self.nvml = nvml
        self._expected = expected_gpus
        self._work = GpuWorkReader(ProcessTable(proc, process_name=process_name))
        self._slots: list[_Slot] = []
        self._driver_version: str | None = None
        self._started = False
        self._lock = threading.Lock()

        def errors(*names: str) -> tuple[type[BaseException], ...]:
            found = (getattr(nvml, n, None) for n in names)
            return tuple(e for e in found if isinstance(e, type))

        self.unsupported_errors = errors("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
        self.lost_errors = errors("NVMLError_GpuIsLost", "NVMLError_ResetRequired")
        self.unknown_errors = errors("NVMLError_Unknown")
        self.not_found_errors = errors("NVMLError_NotFound")
        self._absent_link_errors = errors("NVMLError_NotSupported", "NVMLError_InvalidArgument")

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
            return _text(self.nvml.nvmlSystemGetDriverVersion())
        except Exception:
            return None

    def _open_slot(self, index: int) -> _Slot:
        """A handle and identity for ``index``; a GPU that does not answer gets neither yet."""
        nvml = self.nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            log.warning("nvml_handle_failed", index=index, error=str(exc))
            return _Slot(GpuIdentity(index), None)

        def read(function: str) -> str | None:
            try:
                return _text(getattr(nvml, function)(handle))
            except Exception:
                return None

        try:
            pci_bus_id = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        except Exception:
            pci_bus_id = ""
        identity = GpuIdentity(
            index=index,
            uuid=read("nvmlDeviceGetUUID") or "",
            name=read("nvmlDeviceGetName") or "",
            serial=read("nvmlDeviceGetSerial"),
            pci_bus_id=pci_bus_id,
        )
        return _Slot(identity, handle)

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
            read = _Pass(self, slot, errors)
            try:
                states.append(self._read_gpu(read))
            except _GpuLostError as lost:
                states.append(self._lost(slot, lost.what, lost.error, errors))
        known = {slot.index for slot in self._slots}
        for index in range(self.expected_gpus):
            if index not in known:
                message = f"NVML shows {len(self._slots)} GPUs, {self.expected_gpus} expected"
                states.append(self._lost(_Slot(GpuIdentity(index), None), "count", message, errors))
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
                gone[slot.index] = f"no longer enumerated by NVML ({_text(exc)})"
        return gone

    @staticmethod
    def _lost(slot: _Slot, what: str, error: str, errors: list[CollectError]) -> GpuState:
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

    def _read_gpu(self, read: _Pass) -> GpuState:
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
        fields = self._read_fields(read)
        row_remap, retired = self._memory_repair(read)
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
            ecc=self._ecc(read, fields),
            row_remap=row_remap,
            retired_pages=retired,
            pcie=self._pcie(read, fields),
            nvlink=self._nvlink(read, fields),
            processes=work.processes,
            owners=work.owners,
        )

    def _clock_event_reasons(self, read: _Pass) -> int | None:
        mask = read.call("clock_event_reasons", "nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None and "clock_event_reasons" in read.slot.unsupported:
            # bindings and drivers before 12.2 only know the older name of the same call
            mask = read.call("clock_throttle_reasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        return None if mask is None else int(mask)

    # -- batched field values ---------------------------------------------------------------

    def _wanted_fields(self) -> list[int]:
        names = [n for _, n in _ECC_FIELDS] + [_PCIE_REPLAY_FIELD]
        names += [n for _, n, _ in _NVLINK_FIELDS]
        return [v for v in (getattr(self.nvml, n, None) for n in names) if isinstance(v, int)]

    def _read_fields(self, read: _Pass) -> dict[int, int | None]:
        """Field id -> value (None: failed, recorded). Absent ids fall back to single calls."""
        slot = read.slot
        wanted = [f for f in self._wanted_fields() if f not in slot.unsupported_fields]
        if not wanted:
            return {}
        values = read.call("field_values", "nvmlDeviceGetFieldValues", wanted)
        if values is None:
            return {}
        nvml = self.nvml
        out: dict[int, int | None] = {}
        for value in values:
            field_id, ret = int(value.fieldId), int(value.nvmlReturn)
            if ret == nvml.NVML_SUCCESS:
                out[field_id] = self._field_int(value)
            elif ret in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT):
                slot.unsupported_fields.add(field_id)
            elif ret in (nvml.NVML_ERROR_GPU_IS_LOST, nvml.NVML_ERROR_RESET_REQUIRED):
                raise _GpuLostError(f"field {field_id}", _text(nvml.NVMLError(ret)))
            else:
                out[field_id] = None
                read.fail(f"field {field_id}", _text(nvml.NVMLError(ret)))
        return out

    @staticmethod
    def _field_int(value: Any) -> int | None:
        number = union_value(value.value, int(value.valueType))
        return None if number is None else int(number)

    def _from_field(
        self, fields: dict[int, int | None], name: str, fallback: Callable[[], int | None]
    ) -> int | None:
        field_id = getattr(self.nvml, name, None)
        if field_id in fields:
            return fields[field_id]
        return fallback()

    # -- memory health ----------------------------------------------------------------------

    def _ecc(self, read: _Pass, fields: dict[int, int | None]) -> EccCounts:
        nvml = self.nvml
        counts: dict[str, int | None] = {}
        for what, field_name in _ECC_FIELDS:
            scope, kind = what.split("_")
            error_type = (
                nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED
                if kind == "corrected"
                else nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
            )
            counter = nvml.NVML_VOLATILE_ECC if scope == "volatile" else nvml.NVML_AGGREGATE_ECC

            def single(w: str = what, e: int = error_type, c: int = counter) -> int | None:
                return read.count(f"ecc.{w}", "nvmlDeviceGetTotalEccErrors", e, c)

            counts[what] = self._from_field(fields, field_name, single)
        return EccCounts(**counts)

    def _memory_repair(self, read: _Pass) -> tuple[RowRemap | None, RetiredPages | None]:
        """Row remapping (Ampere and later) or, where the GPU has none, page retirement."""
        rows = read.call("row_remap", "nvmlDeviceGetRemappedRows")
        if rows is not None:
            correctable, uncorrectable, pending, failure = rows
            remap = RowRemap(
                correctable=int(correctable),
                uncorrectable=int(uncorrectable),
                pending=bool(pending),
                failure=bool(failure),
            )
            return remap, None
        if "row_remap" not in read.slot.unsupported:
            return None, None  # a read error, recorded: not a reason to switch mechanism
        nvml = self.nvml
        sbe = read.call(
            "retired_pages.sbe",
            "nvmlDeviceGetRetiredPages",
            nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
        )
        dbe = read.call(
            "retired_pages.dbe",
            "nvmlDeviceGetRetiredPages",
            nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        )
        pending = read.call("retired_pages.pending", "nvmlDeviceGetRetiredPagesPendingStatus")
        if sbe is None and dbe is None and pending is None:
            return None, None
        retired = RetiredPages(
            single_bit=len(sbe or ()),
            double_bit=len(dbe or ()),
            pending=pending == nvml.NVML_FEATURE_ENABLED,
        )
        return None, retired

    # -- interconnect -----------------------------------------------------------------------

    def _pcie(self, read: _Pass, fields: dict[int, int | None]) -> Pcie:
        return Pcie(
            gen=read.count("pcie.gen", "nvmlDeviceGetCurrPcieLinkGeneration"),
            max_gen=read.count("pcie.max_gen", "nvmlDeviceGetMaxPcieLinkGeneration"),
            width=read.count("pcie.width", "nvmlDeviceGetCurrPcieLinkWidth"),
            max_width=read.count("pcie.max_width", "nvmlDeviceGetMaxPcieLinkWidth"),
            replay_count=self._from_field(
                fields,
                _PCIE_REPLAY_FIELD,
                lambda: read.call("pcie.replay_count", "nvmlDeviceGetPcieReplayCounter"),
            ),
        )

    def _links(self, read: _Pass) -> tuple[int, ...]:
        """The links this GPU has, probed once: absent ones answer NotSupported/InvalidArgument."""
        slot = read.slot
        if slot.nvlinks is not None:
            return slot.nvlinks
        count = int(getattr(self.nvml, "NVML_NVLINK_MAX_LINKS", 18))
        slot.nvlinks = tuple(link for link in range(count) if self._link_exists(slot, link))
        return slot.nvlinks

    def _link_exists(self, slot: _Slot, link: int) -> bool:
        try:
            self.nvml.nvmlDeviceGetNvLinkState(slot.handle, link)
        except self._absent_link_errors:
            return False
        except self.lost_errors as exc:
            raise _GpuLostError(f"nvlink{link}.state", _text(exc)) from None
        except Exception:
            return True  # there, but unreadable now: the pass's own state read reports it
        return True

    def _nvlink(self, read: _Pass, fields: dict[int, int | None]) -> NvLink:
        nvml = self.nvml
        links = self._links(read)
        if not links:
            return NvLink()
        answered = up = 0
        for link in links:
            state = read.call(f"nvlink{link}.state", "nvmlDeviceGetNvLinkState", link)
            if state is not None:
                # a link we could not read counts neither as up nor as down
                answered += 1
                up += int(state == nvml.NVML_FEATURE_ENABLED)
        totals: dict[str, int] = {}
        for what, field_name, counter_name in _NVLINK_FIELDS:
            counter = getattr(nvml, counter_name)

            def per_link(w: str = what, c: int = counter) -> int | None:
                found = [
                    read.count(f"nvlink{n}.{w}", "nvmlDeviceGetNvLinkErrorCounter", n, c)
                    for n in links
                ]
                return sum(v for v in found if v is not None)

            totals[what] = self._from_field(fields, field_name, per_link) or 0
        return NvLink(
            links_total=answered,
            links_up=up,
            crc_errors=totals["crc_flit"] + totals["crc_data"],
            replay_errors=totals["replay"],
            recovery_errors=totals["recovery"],
        )
