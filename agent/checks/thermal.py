"""Thermal slowdown: the GPU reports thermal clock events or runs at/over a temperature limit."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.clocks import THERMAL_REASONS, clock_reasons
from agent.checks.debounce import LatchedGpuCondition, require_latch_polls
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
        require_latch_polls(self)


class ThermalCheck:
    name = "thermal"

    def __init__(self, config: ThermalConfig | None = None) -> None:
        self._config = config or ThermalConfig()
        self._slowdown = LatchedGpuCondition(self._config, self._too_hot, self._finding)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        return self._slowdown.findings(sample)

    def _too_hot(self, gpu: GpuState) -> bool:
        limit = self._config.max_temperature_c
        if limit is not None and gpu.temperature_c is not None and gpu.temperature_c >= limit:
            return True
        return bool(gpu.clock_event_reasons) and bool(clock_reasons(gpu) & THERMAL_REASONS)

    def _finding(self, gpu: GpuState) -> Finding:
        return Finding(
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
