"""Power brake: an external signal (PSU or chassis power fault) forces the clocks down."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.clocks import POWER_BRAKE_REASONS, clock_reasons
from agent.checks.debounce import LatchedGpuCondition, require_latch_polls
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class PowerConfig:
    raise_after_polls: int = 2
    clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_latch_polls(self)


class PowerCheck:
    name = "power"

    def __init__(self, config: PowerConfig | None = None) -> None:
        self._config = config or PowerConfig()
        self._braked = LatchedGpuCondition(self._config, _power_braked, self._finding)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        return self._braked.findings(sample)

    def _finding(self, gpu: GpuState) -> Finding:
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code="POWER-BRAKE",
            message=(
                f"GPU {gpu.index} hardware power brake asserted"
                f" (draw {gpu.power_draw_w} W of {gpu.power_limit_w} W)"
            ),
            action=Action.NONE,
            gpu_index=gpu.index,
        )


def _power_braked(gpu: GpuState) -> bool:
    return bool(gpu.clock_event_reasons) and bool(clock_reasons(gpu) & POWER_BRAKE_REASONS)
