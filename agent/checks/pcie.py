"""PCIe: a link trained narrower than it can run, and a rising replay (retransmit) count."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, WindowedIncrease, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity
from gpuwarden_common.wire import GpuState


@dataclass(frozen=True)
class PcieConfig:
    raise_after_polls: int = 3
    clear_after_polls: int = 5
    replay_increase: int = 100
    replay_window_s: float = 600.0
    replay_clear_after_polls: int = 5

    def __post_init__(self) -> None:
        require_positive(
            raise_after_polls=self.raise_after_polls,
            clear_after_polls=self.clear_after_polls,
            replay_increase=self.replay_increase,
            replay_window_s=self.replay_window_s,
            replay_clear_after_polls=self.replay_clear_after_polls,
        )


class PcieCheck:
    """Only the width is compared: idle GPUs drop their link generation to save power."""

    name = "pcie"

    def __init__(self, config: PcieConfig | None = None) -> None:
        self._config = config or PcieConfig()
        self._narrow = Latch(self._config.raise_after_polls, self._config.clear_after_polls)
        self._replays = WindowedIncrease(self._config.replay_window_s)
        self._replay_latch = Latch(1, self._config.replay_clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        return any(g.pcie.width is not None or g.pcie.replay_count is not None for g in sample.gpus)

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        findings: list[Finding] = []
        for gpu in sample.gpus:
            if gpu.lost:
                continue
            pcie = gpu.pcie
            narrow = (
                pcie.width is not None
                and pcie.max_width is not None
                and pcie.width < pcie.max_width
            )
            if self._narrow.update(gpu.index, narrow):
                findings.append(
                    Finding(
                        check=self.name,
                        severity=Severity.WARNING,
                        code="PCIE-DOWNGRADED",
                        message=(
                            f"GPU {gpu.index} PCIe link x{pcie.width} of x{pcie.max_width}"
                            f" (gen {pcie.gen} of {pcie.max_gen})"
                        ),
                        # a link retrains at boot; one that stays narrow needs hands on it
                        action=Action.REBOOT,
                        gpu_index=gpu.index,
                    )
                )
            replay = self._replay_rate(gpu, sample.ts)
            if replay is not None:
                findings.append(replay)
        return tuple(findings)

    def _replay_rate(self, gpu: GpuState, ts: float) -> Finding | None:
        if gpu.pcie.replay_count is None:
            return None
        rise = self._replays.update(gpu.index, ts, gpu.pcie.replay_count)
        if not self._replay_latch.update(gpu.index, rise > self._config.replay_increase):
            return None
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code="PCIE-REPLAY-RATE",
            message=(
                f"GPU {gpu.index} PCIe replays rose by {rise} in the last"
                f" {self._config.replay_window_s:g} s (limit {self._config.replay_increase})"
            ),
            action=Action.NONE,
            gpu_index=gpu.index,
        )
