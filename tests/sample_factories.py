"""Small factories for check inputs: a healthy H100 node unless told otherwise."""

from __future__ import annotations

from typing import Any

from agent.sample import BusFault, CollectError, NodeSample, XidEvent
from gpuwarden_common.wire import (
    EccCounts,
    GpuState,
    HostState,
    NvLink,
    Pcie,
    RowRemap,
)

GIB = 1024**3


def gpu(index: int = 0, **fields: Any) -> GpuState:
    """A healthy, busy H100 SXM; ``fields`` replace any attribute."""
    base: dict[str, Any] = {
        "index": index,
        "uuid": f"GPU-{index:08d}-0000-4000-8000-000000000000",
        "name": "NVIDIA H100 80GB HBM3",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "utilization_gpu_pct": 97.0,
        "memory_used_bytes": 60 * GIB,
        "memory_total_bytes": 80 * GIB,
        "temperature_c": 62.0,
        "power_draw_w": 610.0,
        "power_limit_w": 700.0,
        "clock_sm_mhz": 1980,
        "clock_mem_mhz": 2619,
        "clock_event_reasons": [],
        "ecc_enabled": True,
        "ecc": EccCounts(
            volatile_corrected=0,
            volatile_uncorrected=0,
            aggregate_corrected=12,
            aggregate_uncorrected=0,
        ),
        "row_remap": RowRemap(correctable=1),
        "pcie": Pcie(gen=5, max_gen=5, width=16, max_width=16, replay_count=0),
        "nvlink": NvLink(links_total=18, links_up=18),
    }
    base.update(fields)
    return GpuState(**base)


def host(**fields: Any) -> HostState:
    base: dict[str, Any] = {
        "hostname": "gpu-node-1",
        "memory_used_bytes": 200 * GIB,
        "memory_total_bytes": 2048 * GIB,
        "disk_path": "/",
        "disk_used_bytes": 300 * GIB,
        "disk_total_bytes": 1000 * GIB,
    }
    base.update(fields)
    return HostState(**base)


def sample(
    gpus: tuple[GpuState, ...] | None = None,
    *,
    ts: float = 1_000_000.0,
    n: int = 8,
    **fields: Any,
) -> NodeSample:
    """A node with ``n`` healthy GPUs, or exactly ``gpus``."""
    fields.setdefault("host", host())
    return NodeSample(ts=ts, gpus=gpus if gpus is not None else healthy_gpus(n), **fields)


def healthy_gpus(n: int = 8) -> tuple[GpuState, ...]:
    return tuple(gpu(i) for i in range(n))


def with_gpu(base: NodeSample, replacement: GpuState, *, ts: float | None = None) -> NodeSample:
    """``base`` with one GPU swapped for ``replacement`` (same index)."""
    gpus = tuple(replacement if g.index == replacement.index else g for g in base.gpus)
    return NodeSample(
        ts=base.ts if ts is None else ts,
        gpus=gpus,
        host=base.host,
        gpus_expected=base.gpus_expected,
    )


def xid(code: int, gpu_index: int | None = 0, **fields: Any) -> XidEvent:
    fields.setdefault("ts", 1_000_000.0)
    fields.setdefault("source", "nvml")
    return XidEvent(xid=code, gpu_index=gpu_index, **fields)


def bus_fault(gpu_index: int | None = 0, pci_bus_id: str | None = "0000:18:00") -> BusFault:
    return BusFault(
        ts=1_000_000.0,
        pci_bus_id=pci_bus_id,
        gpu_index=gpu_index,
        text="NVRM: GPU 0000:18:00.0: GPU has fallen off the bus.",
    )


def lost_error(gpu_index: int | None = 0) -> CollectError:
    return CollectError(
        gpu_index=gpu_index, what="temperature", error="NVMLError_GpuIsLost", lost=True
    )
