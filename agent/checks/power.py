"""Power brake: an external signal (PSU or chassis power fault) forces the clocks down."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.clocks import POWER_BRAKE_REASONS, clock_reasons
from agent.checks.debounce import Latch, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity


@dataclass(frozen=True)
class PowerConfig:
    raise_after_polls: int = 2
    clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_positive(
            raise_after_polls=self.raise_after_polls, clear_after_polls=self.clear_after_polls
        )


class PowerCheck:
    name = "power"

    def __init__(self, config: PowerConfig | None = None) -> None:
        self._config = config or PowerConfig()
        self._latch = Latch(self._config.raise_after_polls, self._config.clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        findings: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost:
                continue
            braked = bool(gpu.clock_event_reasons) and bool(
                clock_reasons(gpu) & POWER_BRAKE_REASONS
            )
            if self._latch.update(gpu.index, braked):
                findings.append(
                    Finding(
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
                )
        return tuple(findings)
