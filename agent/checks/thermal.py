"""Thermal slowdown: the GPU reports thermal clock events or runs at/over a temperature limit."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.clocks import THERMAL_REASONS, clock_reasons
from agent.checks.debounce import Latch, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class ThermalConfig:
    # H100/A100 SXM start slowing down around 90 C; None relies on the clock events alone
    max_temperature_c: float | None = 90.0
    raise_after_polls: int = 3
    clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_positive(
            raise_after_polls=self.raise_after_polls, clear_after_polls=self.clear_after_polls
        )


class ThermalCheck:
    name = "thermal"

    def __init__(self, config: ThermalConfig | None = None) -> None:
        self._config = config or ThermalConfig()
        self._latch = Latch(self._config.raise_after_polls, self._config.clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        findings: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost:
                continue
            if self._latch.update(gpu.index, self._too_hot(gpu)):
                findings.append(
                    Finding(
                        check=self.name,
                        severity=Severity.WARNING,
                        code="THERMAL-SLOWDOWN",
                        message=(
                            f"GPU {gpu.index} thermal slowdown: {gpu.temperature_c} C,"
                            f" reasons: {', '.join(gpu.clock_event_reasons) or 'none now'}"
                        ),
                        action=Action.NONE,
                        gpu_index=gpu.index,
                    )
                )
        return tuple(findings)

    def _too_hot(self, gpu: GpuState) -> bool:
        limit = self._config.max_temperature_c
        if limit is not None and gpu.temperature_c is not None and gpu.temperature_c >= limit:
            return True
        return bool(gpu.clock_event_reasons) and bool(clock_reasons(gpu) & THERMAL_REASONS)
