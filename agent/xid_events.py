"""XIDs the moment the driver reports them, through an NVML event set.

Polling would see an XID only through its consequences; the event set hands over the code
itself, within milliseconds. :class:`XidEventWatcher` waits on it in a daemon thread with a
short timeout, so :meth:`XidEventWatcher.stop` returns promptly.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from agent.sample import XidEvent
from gpuwarden_common import logs

log = structlog.get_logger(__name__)

OnXid = Callable[[XidEvent], None]
OnLost = Callable[[int | None, str], None]
OnUnsupported = Callable[[int, str], None]

_ERROR_BACKOFF_S = 1.0


def handle_key(handle: object) -> Hashable:
    """A key under which two handles of the same GPU compare equal.

    Real pynvml handles are ctypes pointers, which compare by object identity; the address
    they hold is what identifies the device. Other handles (the fake's) compare as they are.
    """
    try:
        address = ctypes.cast(handle, ctypes.c_void_p).value  # type: ignore[arg-type]
    except (TypeError, ctypes.ArgumentError):
        return handle if isinstance(handle, Hashable) else id(handle)
    return ("ptr", address)


@dataclass(frozen=True)
class _Gpu:
    index: int
    handle: Any
    uuid: str | None
    pci_bus_id: str | None


class XidEventWatcher:
    """Calls ``on_xid`` for every XID the driver reports, and ``on_lost`` when a GPU is gone.

    ``on_unsupported(index, reason)`` hears about GPUs that cannot deliver XID events (the
    kernel-log follower is then the only witness for them). ``source`` tags the events:
    ``"sim"`` under the simulated backend.

    One lost GPU makes every wait on its event set fail, which would hide the XIDs of all the
    others; so a lost GPU is dropped from the set, and taken back once it answers again.
    """

    def __init__(
        self,
        nvml: Any,
        on_xid: OnXid,
        on_lost: OnLost,
        *,
        on_unsupported: OnUnsupported | None = None,
        timeout_ms: int = 500,
        source: Literal["nvml", "sim"] = "nvml",
        recheck_lost_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nvml = nvml
        self._on_xid = on_xid
        self._on_lost = on_lost
        self._on_unsupported = on_unsupported
        self._timeout_ms = timeout_ms
        self._source: Literal["nvml", "sim"] = source
        self._recheck_lost_s = recheck_lost_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._initialised = False
        self._gpus: dict[int, _Gpu] = {}  # every GPU that could register, by index
        self._by_key: dict[Hashable, _Gpu] = {}
        self._by_uuid: dict[str, _Gpu] = {}
        self._active: set[int] = set()  # registered in the current event set
        self._lost: set[int] = set()  # dropped from the set until they answer again
        self._unnamed_loss_reported = False
        self._last_recheck = 0.0

        def error(name: str) -> tuple[type[BaseException], ...]:
            found = getattr(nvml, name, None)
            return (found,) if isinstance(found, type) else ()

        self._timeout_error = error("NVMLError_Timeout")
        self._not_supported = error("NVMLError_NotSupported")
        self._lost_errors = error("NVMLError_GpuIsLost") + error("NVMLError_ResetRequired")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def registered(self) -> tuple[int, ...]:
        """The GPU indices whose XIDs this watcher receives now."""
        return tuple(sorted(self._active))

    def start(self) -> bool:
        """Initialise NVML (reference counted), register every GPU, start the thread.

        False, after one warning, when NVML events cannot be had at all (no driver, or a
        platform without event sets): the kernel-log follower is then the XID source.
        """
        nvml = self._nvml
        try:
            nvml.nvmlInit()
            self._initialised = True
            self._event_set = nvml.nvmlEventSetCreate()
            for index in range(int(nvml.nvmlDeviceGetCount())):
                self._register_new(index)
        except Exception as exc:
            log.warning("xid_events_unavailable", error=f"{type(exc).__name__}: {exc}")
            self._release()
            return False
        if not self._active:
            log.warning("xid_events_none_registered", hint="XIDs come from the kernel log only")
        self._stop.clear()
        self._thread = threading.Thread(
            target=logs.in_this_context(self._run), name="xid-events", daemon=True
        )
        self._thread.start()
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        """Returns within about one wait timeout (``timeout_ms``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                # stuck in the driver: freeing the set under it could crash the process
                log.warning("xid_events_stop_timeout", waited_s=timeout_s)
                return
        self._release()

    # -- registration -----------------------------------------------------------------------

    def _register_new(self, index: int) -> None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            nvml.nvmlDeviceRegisterEvents(
                handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
            )
        except Exception as exc:
            self._unsupported(index, exc)
            return
        gpu = _Gpu(index, handle, self._read(handle, "nvmlDeviceGetUUID"), self._pci(handle))
        self._gpus[index] = gpu
        self._by_key[handle_key(handle)] = gpu
        if gpu.uuid:
            self._by_uuid[gpu.uuid] = gpu
        self._active.add(index)

    def _unsupported(self, index: int, exc: Exception) -> None:
        if isinstance(exc, self._not_supported):
            reason = "XID events not supported on this GPU"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("xid_events_unavailable", index=index, reason=reason)
        if self._on_unsupported is not None:
            try:
                self._on_unsupported(index, reason)
            except Exception:
                log.exception("unsupported_callback_failed", index=index)

    def _read(self, handle: Any, function: str) -> str | None:
        try:
            value = getattr(self._nvml, function)(handle)
        except Exception:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def _pci(self, handle: Any) -> str | None:
        try:
            bus_id = self._nvml.nvmlDeviceGetPciInfo(handle).busId
        except Exception:
            return None
        return bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)

    def _rebuild_event_set(self) -> None:
        """A fresh set holding only the active GPUs (NVML cannot unregister one)."""
        nvml = self._nvml
        self._free_event_set()
        self._event_set = nvml.nvmlEventSetCreate()
        for index in sorted(self._active):
            if not self._register_existing(index):
                self._active.discard(index)
                self._lost.add(index)

    def _register_existing(self, index: int) -> bool:
        nvml = self._nvml
        try:
            nvml.nvmlDeviceRegisterEvents(
                self._gpus[index].handle, nvml.nvmlEventTypeXidCriticalError, self._event_set
            )
        except Exception as exc:
            log.warning("xid_events_register_failed", index=index, error=str(exc))
            return False
        return True

    def _free_event_set(self) -> None:
        if self._event_set is not None:
            try:
                self._nvml.nvmlEventSetFree(self._event_set)
            except Exception as exc:
                log.warning("xid_event_set_free_failed", error=str(exc))
            self._event_set = None

    def _release(self) -> None:
        self._free_event_set()
        self._gpus.clear()
        self._by_key.clear()
        self._by_uuid.clear()
        self._active.clear()
        self._lost.clear()
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.warning("nvml_shutdown_failed", error=str(exc))

    # -- the thread -------------------------------------------------------------------------

    def _wait_function(self) -> Callable[[Any, int], Any]:
        wait: Callable[[Any, int], Any] | None = getattr(self._nvml, "nvmlEventSetWait_v2", None)
        return wait if wait is not None else self._nvml.nvmlEventSetWait

    def _run(self) -> None:
        wait = self._wait_function()
        while not self._stop.is_set():
            if not self._active:
                # nothing to wait on (all lost or none supported): just look for returns
                self._stop.wait(self._timeout_ms / 1000)
                self._recheck_lost()
                continue
            try:
                data = wait(self._event_set, self._timeout_ms)
            except self._timeout_error:
                self._unnamed_loss_reported = False
                self._recheck_lost()
                continue
            except self._lost_errors as exc:
                self._gpu_lost(str(exc))
                continue
            except Exception as exc:
                log.warning("xid_event_wait_failed", error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(_ERROR_BACKOFF_S)
                continue
            self._unnamed_loss_reported = False
            self._deliver(data)

    def _deliver(self, data: Any) -> None:
        if not int(data.eventType) & int(self._nvml.nvmlEventTypeXidCriticalError):
            return
        xid = int(data.eventData)
        if xid == 0:
            return  # NVML's "no XID" placeholder, not a fault
        gpu = self._gpu_of(data.device)
        event = XidEvent(
            xid=xid,
            ts=self._clock(),
            source=self._source,
            gpu_index=None if gpu is None else gpu.index,
            pci_bus_id=None if gpu is None else gpu.pci_bus_id,
            gpu_uuid=None if gpu is None else gpu.uuid,
        )
        try:
            self._on_xid(event)
        except Exception:
            log.exception("xid_callback_failed", xid=xid)

    def _gpu_of(self, device: Any) -> _Gpu | None:
        gpu = self._by_key.get(handle_key(device))
        if gpu is not None:
            return gpu
        uuid = self._read(device, "nvmlDeviceGetUUID")
        return None if uuid is None else self._by_uuid.get(uuid)

    def _gpu_lost(self, error: str) -> None:
        """The wait says a GPU is gone without naming it: ask each, report, drop it."""
        lost = sorted(i for i in self._active if self._is_lost(self._gpus[i].handle))
        if lost:
            self._active.difference_update(lost)
            self._lost.update(lost)
            self._report_lost(lost, error)
            try:
                self._rebuild_event_set()
            except Exception as exc:
                log.warning("xid_event_set_rebuild_failed", error=str(exc))
                self._stop.wait(_ERROR_BACKOFF_S)
            return
        if not self._unnamed_loss_reported:
            self._unnamed_loss_reported = True
            self._report_lost([None], error)
        # every GPU still answers, yet the wait fails at once: do not spin on it
        self._stop.wait(_ERROR_BACKOFF_S)

    def _report_lost(self, indices: list[int] | list[None], error: str) -> None:
        for index in indices:
            log.warning("gpu_lost_event", index=index, error=error)
            try:
                self._on_lost(index, error)
            except Exception:
                log.exception("lost_callback_failed", index=index)

    def _recheck_lost(self) -> None:
        """Take back GPUs that answer again (after a reset) so their XIDs are seen."""
        now = time.monotonic()
        if not self._lost or now - self._last_recheck < self._recheck_lost_s:
            return
        self._last_recheck = now
        for index in sorted(self._lost):
            handle = self._gpus[index].handle
            if not self._is_lost(handle) and self._register_existing(index):
                self._lost.discard(index)
                self._active.add(index)
                log.info("xid_events_gpu_back", index=index)

    def _is_lost(self, handle: Any) -> bool:
        try:
            self._nvml.nvmlDeviceGetMemoryInfo(handle)
        except self._lost_errors:
            return True
        except Exception:
            return False
        return False
