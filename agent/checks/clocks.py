"""Clock slowdown that neither heat nor the power brake explains (their checks report those).

Also home of the clock-event reason names the thermal and power checks share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.checks.debounce import LatchedGpuCondition, require_latch_polls
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState

# Reasons are compared in a normal form (lower case, letters and digits only, NVML's prefixes
# dropped), so "HwThermalSlowdown", "hw_thermal_slowdown" and
# "nvmlClocksEventReasonHwThermalSlowdown" are one reason whatever the collector writes.
THERMAL_REASONS = frozenset({"swthermalslowdown", "hwthermalslowdown"})
POWER_BRAKE_REASONS = frozenset({"hwpowerbrakeslowdown"})
HW_SLOWDOWN_REASONS = frozenset({"hwslowdown"})
_PREFIXES = ("nvmlclockseventreason", "nvmlclocksthrottlereason", "clockseventreason")


def normal_reason(name: str) -> str:
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def clock_reasons(gpu: GpuState) -> frozenset[str]:
    return frozenset(normal_reason(r) for r in gpu.clock_event_reasons)


@dataclass(frozen=True)
class ClocksConfig:
    reasons: frozenset[str] = HW_SLOWDOWN_REASONS
    # HW slowdown is also raised by heat and the power brake, which have checks of their own
    explained_by: frozenset[str] = field(default=THERMAL_REASONS | POWER_BRAKE_REASONS)
    raise_after_polls: int = 3
    clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_latch_polls(self)


class ClocksCheck:
    name = "clocks"

    def __init__(self, config: ClocksConfig | None = None) -> None:
        self._config = config or ClocksConfig()
        self._reasons = frozenset(normal_reason(r) for r in self._config.reasons)
        self._explained_by = frozenset(normal_reason(r) for r in self._config.explained_by)
        self._slowdown = LatchedGpuCondition(self._config, self._unexplained, self._finding)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        return self._slowdown.findings(sample)

    def _unexplained(self, gpu: GpuState) -> bool:
        reasons = clock_reasons(gpu) if gpu.clock_event_reasons else frozenset()
        return bool(reasons & self._reasons) and not reasons & self._explained_by

    def _finding(self, gpu: GpuState) -> Finding:
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code="CLOCKS-SLOWDOWN",
            message=(
                f"GPU {gpu.index} clocks held down by hardware"
                f" (SM {gpu.clock_sm_mhz} MHz, reasons:"
                f" {', '.join(gpu.clock_event_reasons) or 'none now'})"
            ),
            action=Action.NONE,
            gpu_index=gpu.index,
        )
