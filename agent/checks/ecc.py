"""ECC: uncorrectable errors (hard, sticky) and a rising rate of corrected ones (debounced)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, StickyFindings, WindowedIncrease, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class EccConfig:
    # corrected (single-bit) errors: more than this many within the window is a warning
    sbe_increase: int = 100
    sbe_window_s: float = 3600.0
    sbe_clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_positive(
            sbe_increase=self.sbe_increase,
            sbe_window_s=self.sbe_window_s,
            sbe_clear_after_polls=self.sbe_clear_after_polls,
        )


class EccCheck:
    name = "ecc"

    def __init__(self, config: EccConfig | None = None) -> None:
        self._config = config or EccConfig()
        self._sticky = StickyFindings()
        self._sbe = WindowedIncrease(self._config.sbe_window_s)
        # the rate rises and falls with the window; the latch only holds it for M clean polls
        self._sbe_latch = Latch(1, self._config.sbe_clear_after_polls)
        self._first_aggregate_dbe: dict[int, int] = {}

    def is_supported(self, sample: NodeSample) -> bool:
        # a kept fault must outlive the readings: a GPU that later reads nothing is still bad
        return bool(self._sticky) or any(gpu.ecc_enabled for gpu in sample.gpus)

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        rates: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost or not gpu.ecc_enabled:
                continue
            if not self._sticky.has(gpu.index, "ECC-DBE") and self._uncorrected(gpu):
                self._sticky.add(
                    Finding(
                        check=self.name,
                        severity=Severity.CRITICAL,
                        code="ECC-DBE",
                        message=(
                            f"GPU {gpu.index} uncorrectable (double-bit) ECC errors:"
                            f" volatile {gpu.ecc.volatile_uncorrected},"
                            f" aggregate {gpu.ecc.aggregate_uncorrected}"
                        ),
                        action=Action.RESET_GPU,
                        gpu_index=gpu.index,
                    )
                )
            rate = self._sbe_rate(gpu, sample.ts)
            if rate is not None:
                rates.append(rate)
        return self._sticky.findings() + tuple(rates)

    def _uncorrected(self, gpu: GpuState) -> bool:
        """Any since the last reset (volatile), or new ones seen by this process (aggregate)."""
        ecc = gpu.ecc
        if ecc.volatile_uncorrected is not None:
            return ecc.volatile_uncorrected > 0
        if ecc.aggregate_uncorrected is None:
            return False
        # lifetime totals include errors long since remapped: only a rise is news
        first = self._first_aggregate_dbe.setdefault(gpu.index, ecc.aggregate_uncorrected)
        return ecc.aggregate_uncorrected > first

    def _sbe_rate(self, gpu: GpuState, ts: float) -> Finding | None:
        ecc = gpu.ecc
        kind, corrected = (
            ("volatile", ecc.volatile_corrected)
            if ecc.volatile_corrected is not None
            else ("aggregate", ecc.aggregate_corrected)
        )
        if corrected is None:
            return None
        rise = self._sbe.update((gpu.index, kind), ts, corrected)
        if not self._sbe_latch.update(gpu.index, rise > self._config.sbe_increase):
            return None
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code="ECC-SBE-RATE",
            message=(
                f"GPU {gpu.index} corrected ECC errors rose by {rise} in the last"
                f" {self._config.sbe_window_s:g} s (limit {self._config.sbe_increase})"
            ),
            action=Action.NONE,
            gpu_index=gpu.index,
        )
