"""What one collection pass sees: the input of every check.

The collector fills GPU fields it can read and leaves the rest ``None``; health and action on
each :class:`GpuState` stay at their defaults here and are filled in by the verdict step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpuwarden_common.wire import GpuState, HostState


@dataclass(frozen=True)
class XidEvent:
    """One XID as caught by the NVML event set or the kernel log (code 0 never gets here).

    ``gpu_index`` is None when the source names only a PCI bus id that matches no known GPU.
    """

    xid: int
    ts: float
    source: Literal["nvml", "kmsg", "sim"]
    gpu_index: int | None
    pci_bus_id: str | None = None
    gpu_uuid: str | None = None
    text: str = ""


@dataclass(frozen=True)
class BusFault:
    """A kernel-log 'GPU has fallen off the bus' line: it carries no XID."""

    ts: float
    pci_bus_id: str | None
    gpu_index: int | None
    text: str = ""


@dataclass(frozen=True)
class CollectError:
    """A read that failed. ``lost`` marks NVMLError_GpuIsLost / reset-required."""

    gpu_index: int | None
    what: str
    error: str
    lost: bool = False


@dataclass(frozen=True)
class NodeSample:
    ts: float
    gpus: tuple[GpuState, ...]
    host: HostState
    gpus_expected: int | None = None
    driver_version: str | None = None
    errors: tuple[CollectError, ...] = ()
    # faults caught since the previous sample, drained from the event queue by the daemon
    xids: tuple[XidEvent, ...] = ()
    bus_faults: tuple[BusFault, ...] = ()
    collect_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    def gpu(self, index: int) -> GpuState | None:
        for g in self.gpus:
            if g.index == index:
                return g
        return None
