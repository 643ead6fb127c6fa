"""The simulated GPUs' own state: identity, counters and the switches faults flip.

:class:`agent.sim.fake_pynvml.FakeNvml` answers NVML calls from these records; tests and
scenarios change them through its controls, never directly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import pynvml

from agent.sim.fake_usage import FakeProcess, LoadScript

MODEL_NAME = "NVIDIA H100 80GB HBM3"
MEMORY_TOTAL_BYTES = 81559 * 1024 * 1024
POWER_LIMIT_MW = 700_000
DRIVER_VERSION = "550.90.07"
NVLINKS_PER_GPU = 18
PCIE_GEN = 5
PCIE_WIDTH = 16
SM_CLOCK_MHZ = 1980
SM_CLOCK_THROTTLED_MHZ = 1095
MEM_CLOCK_MHZ = 2619
# the bus numbers of the eight GPUs of a p5.48xlarge, so demo output looks like the real thing
_BUSES: Final = (0x53, 0x64, 0x75, 0x86, 0x97, 0xA8, 0xB9, 0xCA)


@dataclass(frozen=True)
class FakeHandle:
    """What nvmlDeviceGetHandleByIndex returns: hashable and comparable, like a handle key."""

    index: int


@dataclass
class FakeGpu:
    index: int
    uuid: str
    serial: str
    bus: int
    load: LoadScript
    lost: bool = False
    thermal: bool = False
    nvlink_up: list[bool] = field(default_factory=list)
    # per link: [replay, recovery, crc_flit, crc_data], NVML_NVLINK_ERROR_DL_* order
    nvlink_errors: list[list[int]] = field(default_factory=list)
    ecc_volatile: list[int] = field(default_factory=lambda: [0, 0])  # corrected, uncorrected
    ecc_aggregate: list[int] = field(default_factory=lambda: [0, 0])
    remap_correctable: int = 0
    remap_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    retired_sbe: list[int] = field(default_factory=list)
    retired_dbe: list[int] = field(default_factory=list)
    retirement_pending: bool = False
    pcie_replays: int = 0
    processes: list[FakeProcess] = field(default_factory=list)

    @property
    def bus_id(self) -> str:
        return f"00000000:{self.bus:02X}:00.0"


def _stable_hex(seed: int | str, text: str, length: int) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:length]


def make_gpu(index: int, seed: int | str, nvlinks: int) -> FakeGpu:
    h = _stable_hex(seed, f"gpu{index}", 32)
    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
    serial = str(1650000000000 + int(_stable_hex(seed, f"serial{index}", 8), 16) % 10**9)
    bus = _BUSES[index] if index < len(_BUSES) else 0x10 + index
    phase = int(_stable_hex(seed, f"phase{index}", 4), 16) / 0xFFFF * 2 * math.pi
    return FakeGpu(
        index=index,
        uuid=uuid,
        serial=serial,
        bus=bus,
        load=LoadScript(phase),
        nvlink_up=[True] * nvlinks,
        nvlink_errors=[[0, 0, 0, 0] for _ in range(nvlinks)],
    )


def field_value(g: FakeGpu, field_id: int, unsupported: set[str]) -> int | None:
    """A batched field of ``g`` (None: not supported); ``unsupported``: pynvml names made
    to fail, ``NVML_FI_*`` ones included."""
    p = pynvml

    def links(counter: int) -> int:
        return sum(errors[counter] for errors in g.nvlink_errors)

    nvlink_fields: dict[int, Callable[[], int]] = {
        p.NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL: lambda: links(0),
        p.NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL: lambda: links(1),
        p.NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL: lambda: links(2),
        p.NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL: lambda: links(3),
        p.NVML_FI_DEV_NVLINK_LINK_COUNT: lambda: len(g.nvlink_up),
    }
    other_fields: dict[int, Callable[[], int]] = {
        p.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: lambda: g.ecc_volatile[0],
        p.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: lambda: g.ecc_volatile[1],
        p.NVML_FI_DEV_ECC_SBE_AGG_TOTAL: lambda: g.ecc_aggregate[0],
        p.NVML_FI_DEV_ECC_DBE_AGG_TOTAL: lambda: g.ecc_aggregate[1],
        p.NVML_FI_DEV_PCIE_REPLAY_COUNTER: lambda: g.pcie_replays,
    }
    failing = {getattr(p, n) for n in unsupported if n.startswith("NVML_FI_")}
    if field_id in failing:
        return None
    if field_id in nvlink_fields:
        # a card without NVLink does not support its fields
        return nvlink_fields[field_id]() if g.nvlink_up else None
    reader = other_fields.get(field_id)
    return None if reader is None else reader()
