"""NVLink: links down, and a rising count of link errors (CRC, replay, recovery)."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, WindowedIncrease, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class NvLinkConfig:
    # links retrain for a moment after a reset: two polls before a down link counts
    raise_after_polls: int = 2
    clear_after_polls: int = 5
    error_increase: int = 100
    error_window_s: float = 600.0
    error_clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_positive(
            raise_after_polls=self.raise_after_polls,
            clear_after_polls=self.clear_after_polls,
            error_increase=self.error_increase,
            error_window_s=self.error_window_s,
            error_clear_after_polls=self.error_clear_after_polls,
        )


class NvLinkCheck:
    name = "nvlink"

    def __init__(self, config: NvLinkConfig | None = None) -> None:
        self._config = config or NvLinkConfig()
        self._down = Latch(self._config.raise_after_polls, self._config.clear_after_polls)
        self._errors = WindowedIncrease(self._config.error_window_s)
        self._error_latch = Latch(1, self._config.error_clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        return any(g.nvlink.links_total > 0 for g in sample.gpus)

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        findings: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost or gpu.nvlink.links_total == 0:
                continue
            link = gpu.nvlink
            if self._down.update(gpu.index, link.links_up < link.links_total):
                findings.append(
                    Finding(
                        check=self.name,
                        severity=Severity.CRITICAL,
                        code="NVLINK-DOWN",
                        message=f"GPU {gpu.index} has {link.links_up} of {link.links_total}"
                        " NVLinks up",
                        # an NVSwitch fabric is reset as a whole, which takes a reboot
                        action=Action.REBOOT,
                        gpu_index=gpu.index,
                    )
                )
            rate = self._error_rate(gpu, sample.ts)
            if rate is not None:
                findings.append(rate)
        return tuple(findings)

    def _error_rate(self, gpu: GpuState, ts: float) -> Finding | None:
        link = gpu.nvlink
        total = link.crc_errors + link.replay_errors + link.recovery_errors
        rise = self._errors.update(gpu.index, ts, total)
        if not self._error_latch.update(gpu.index, rise > self._config.error_increase):
            return None
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code="NVLINK-ERROR-RATE",
            message=(
                f"GPU {gpu.index} NVLink errors rose by {rise} in the last"
                f" {self._config.error_window_s:g} s (limit {self._config.error_increase};"
                f" totals CRC {link.crc_errors}, replay {link.replay_errors},"
                f" recovery {link.recovery_errors})"
            ),
            action=Action.NONE,
            gpu_index=gpu.index,
        )
