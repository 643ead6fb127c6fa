"""One pass of NVML calls on one GPU, with the error rules every read shares.

A field that cannot be read becomes ``None`` with a :class:`~agent.sample.CollectError`; a
call the GPU does not support is remembered and not made again (on a large node every wasted
NVML call is paid every few seconds); a GPU that is gone raises :class:`GpuLostError`, which
ends the pass on that GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.sample import CollectError

_RECORD = object()  # NvmlPass.call's default for NotFound: a failure like any other
# c_nvmlValue_t member per NVML_VALUE_TYPE_* (0..6)
VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


@dataclass(frozen=True)
class GpuIdentity:
    """What does not change while the GPU is on the bus; kept to name a GPU once it is lost."""

    index: int
    uuid: str = ""
    name: str = ""
    serial: str | None = None
    pci_bus_id: str = ""


class GpuLostError(Exception):
    """The GPU is gone (lost, reset required, or an Unknown error and no answer after it)."""

    def __init__(self, what: str, error: str) -> None:
        super().__init__(f"{what}: {error}")
        self.what = what
        self.error = error


@dataclass
class Slot:
    """One GPU index, across passes."""

    identity: GpuIdentity
    handle: Any | None
    unsupported: set[str] = field(default_factory=set)
    unsupported_fields: set[int] = field(default_factory=set)
    nvlinks: tuple[int, ...] | None = None  # links that exist; None until probed

    @property
    def index(self) -> int:
        return self.identity.index


def text(value: object) -> str:
    """NVML strings arrive as bytes from some bindings and str from others."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def union_value(value: Any, value_type: int) -> float | None:
    """The number in a ``c_nvmlValue_t`` union of type ``NVML_VALUE_TYPE_*``."""
    if not 0 <= value_type < len(VALUE_MEMBERS):
        return None
    return float(getattr(value, VALUE_MEMBERS[value_type]))


class NvmlErrors:
    """The binding's error classes, by what they mean to a pass (absent ones are left out)."""

    def __init__(self, nvml: Any) -> None:
        def errors(*names: str) -> tuple[type[BaseException], ...]:
            found = (getattr(nvml, n, None) for n in names)
            return tuple(e for e in found if isinstance(e, type))

        self.unsupported = errors("NVMLError_NotSupported", "NVMLError_FunctionNotFound")
        self.lost = errors("NVMLError_GpuIsLost", "NVMLError_ResetRequired")
        self.unknown = errors("NVMLError_Unknown")
        self.not_found = errors("NVMLError_NotFound")
        self.absent_link = errors("NVMLError_NotSupported", "NVMLError_InvalidArgument")


class NvmlPass:
    """The calls of one pass on one GPU, with the error rules applied."""

    def __init__(
        self, nvml: Any, kinds: NvmlErrors, slot: Slot, errors: list[CollectError]
    ) -> None:
        self._nvml = nvml
        self._kinds = kinds
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
        Raises :class:`GpuLostError` when the GPU is gone: the pass on this GPU ends there.
        """
        slot = self.slot
        if what in slot.unsupported:
            return None
        fn: Callable[..., Any] | None = getattr(self._nvml, function, None)
        if fn is None:  # an older binding without this function
            slot.unsupported.add(what)
            return None
        c = self._kinds
        try:
            return fn(slot.handle, *args)
        except c.unsupported:
            slot.unsupported.add(what)
            return None
        except c.lost as exc:
            raise GpuLostError(what, text(exc)) from None
        except c.not_found as exc:
            if not_found is _RECORD:
                self.fail(what, exc)
                return None
            return not_found
        except c.unknown as exc:
            # NVMLError_Unknown from a handle that answered before usually means the GPU
            # went away; one cheap call tells that apart from a single odd field
            if self._probe_fails():
                raise GpuLostError(what, text(exc)) from None
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
