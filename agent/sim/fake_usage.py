"""The simulated GPUs' load over time, and NVML's sample buffers made from it.

A real driver samples each GPU's utilization every fraction of a second into a ring buffer
that ``nvmlDeviceGetSamples`` reads ("samples newer than this timestamp"), and keeps
per-process figures that ``nvmlDeviceGetProcessUtilization`` reads the same way. The fake
does the same on its own clock: samples sit on a fixed grid of times since the fake started
(``SAMPLE_PERIOD_US``), the buffer holds the newest ``SAMPLE_BUFFER`` of them, and each
sample's value is the GPU's load at its time, a gentle sine wave unless a test scripted it.
"""

from __future__ import annotations

import ctypes
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import pynvml

# the driver samples every 1/6 s to 1 s depending on the product (NVML's documentation of
# nvmlDeviceGetUtilizationRates); the fake takes the fast end and a 20 s buffer
SAMPLE_PERIOD_US = 166_667
SAMPLE_BUFFER = 120
# c_nvmlSample_t: an unsigned long long stamp, then the 8-byte c_nvmlValue_t union whose
# uiVal is its first 4 bytes. Packing the array's bytes at once costs a fraction of setting
# ~60 fields one by one through pynvml's attribute hooks, every GPU, every pass.
_SAMPLE = struct.Struct("=QI4x")
assert _SAMPLE.size == ctypes.sizeof(pynvml.c_nvmlSample_t)


@dataclass(frozen=True)
class FakeProcess:
    """One process on a simulated GPU."""

    pid: int
    used_bytes: int
    sm_share: float = 1.0  # the share of the GPU's utilization that is this process's
    cgroup: str = "0::/\n"  # what /proc/<pid>/cgroup reads in the simulator
    graphics: bool = False  # a graphics context (listed apart from compute processes)


@dataclass
class LoadScript:
    """One GPU's utilization over time: a sine wave around 82 % unless scripted."""

    phase: float
    # (from t, gpu %, memory %): the latest entry at or before t applies; gpu None = the wave
    steps: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    # the loads of the latest tick range asked for: one pass asks three times (GPU samples,
    # memory samples, per process) for the same range
    _cached: tuple[range, list[tuple[int, int]]] | None = None

    def set(self, t: float, gpu_pct: float | None, memory_pct: float | None) -> None:
        self.steps.append((t, gpu_pct, memory_pct))
        self._cached = None

    def over(self, clock: SampleClock, ticks: range) -> list[tuple[int, int]]:
        """(GPU %, memory %) at each tick."""
        if self._cached is None or self._cached[0] != ticks:
            self._cached = (ticks, [self.at(clock.seconds(tick)) for tick in ticks])
        return self._cached[1]

    def at(self, t: float) -> tuple[int, int]:
        """(GPU %, memory %) at ``t`` seconds since the fake started."""
        for since, gpu, memory in reversed(self.steps):
            if since <= t:
                if gpu is None:
                    break
                return round(gpu), round(gpu / 2 if memory is None else memory)
        wave = max(0, min(100, round(82 + 12 * math.sin(t / 20 + self.phase))))
        return wave, wave // 2


@dataclass(frozen=True)
class SampleClock:
    """Maps the fake's seconds to NVML's microsecond CPU timestamps and the sample grid."""

    base_us: int  # the wall clock, in microseconds, when the fake started

    def ticks(self, now_s: float, last_seen_us: int) -> range:
        """The grid points in the buffer at ``now_s`` newer than ``last_seen_us``."""
        newest = int(now_s * 1_000_000) // SAMPLE_PERIOD_US
        oldest = max(1, newest - SAMPLE_BUFFER + 1)
        if last_seen_us > self.base_us:
            oldest = max(oldest, (last_seen_us - self.base_us) // SAMPLE_PERIOD_US + 1)
        return range(oldest, newest + 1)

    def seconds(self, tick: int) -> float:
        return tick * SAMPLE_PERIOD_US / 1_000_000

    def timestamp(self, tick: int) -> int:
        return self.base_us + tick * SAMPLE_PERIOD_US


def utilization_samples(
    script: LoadScript, clock: SampleClock, ticks: range, *, memory: bool
) -> Any:
    """A ``c_nvmlSample_t`` array, one sample per tick, as nvmlDeviceGetSamples gives it."""
    loads = script.over(clock, ticks)
    raw = b"".join(
        _SAMPLE.pack(clock.timestamp(tick), load[1] if memory else load[0])
        for tick, load in zip(ticks, loads, strict=True)
    )
    return (pynvml.c_nvmlSample_t * len(ticks)).from_buffer_copy(raw)


def process_samples(
    script: LoadScript, clock: SampleClock, ticks: range, processes: list[FakeProcess]
) -> list[Any]:
    """One ``c_nvmlProcessUtilizationSample_t`` per process that used the GPU in ``ticks``,
    its figures the mean over them, stamped with the newest tick (NVML lists only processes
    with non-zero use)."""
    loads = script.over(clock, ticks)
    gpu = sum(g for g, _ in loads) / len(loads)
    memory = sum(m for _, m in loads) / len(loads)
    found = []
    for p in processes:
        sm, mem = round(gpu * p.sm_share), round(memory * p.sm_share)
        if sm or mem:
            sample = pynvml.c_nvmlProcessUtilizationSample_t()
            sample.pid, sample.timeStamp = p.pid, clock.timestamp(ticks[-1])
            sample.smUtil, sample.memUtil = sm, mem
            found.append(sample)
    return found
