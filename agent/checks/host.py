"""The host around the GPUs: a full disk (checkpoints, images) and memory pressure."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, require_latch_polls, require_positive
from agent.sample import NodeSample
from gpuwarden_common.health import Action, Finding, Severity

_HOST = "host"


@dataclass(frozen=True)
class HostConfig:
    disk_full_pct: float = 95.0
    memory_pct: float = 95.0
    raise_after_polls: int = 2
    clear_after_polls: int = 3

    def __post_init__(self) -> None:
        require_positive(disk_full_pct=self.disk_full_pct, memory_pct=self.memory_pct)
        require_latch_polls(self)


class HostCheck:
    name = "host"

    def __init__(self, config: HostConfig | None = None) -> None:
        self._config = config or HostConfig()
        self._disk = Latch(self._config.raise_after_polls, self._config.clear_after_polls)
        self._memory = Latch(self._config.raise_after_polls, self._config.clear_after_polls)

    def is_supported(self, sample: NodeSample) -> bool:
        return True

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        host = sample.host
        disk = self._usage(
            self._disk,
            "HOST-DISK-FULL",
            f"disk {host.disk_path}",
            _percent(host.disk_used_bytes, host.disk_total_bytes),
            self._config.disk_full_pct,
        )
        memory = self._usage(
            self._memory,
            "HOST-MEMORY",
            "host memory",
            _percent(host.memory_used_bytes, host.memory_total_bytes),
            self._config.memory_pct,
        )
        return tuple(f for f in (disk, memory) if f is not None)

    def _usage(
        self, latch: Latch, code: str, what: str, pct: float | None, limit_pct: float
    ) -> Finding | None:
        """A warning while usage has stayed at or over ``limit_pct`` long enough to latch."""
        if not latch.update(_HOST, pct is not None and pct >= limit_pct):
            return None
        return Finding(
            check=self.name,
            severity=Severity.WARNING,
            code=code,
            message=f"{what}: {_show(pct)} (limit {limit_pct:g}%)",
            action=Action.NONE,
        )


def _percent(used: int | None, total: int | None) -> float | None:
    if used is None or not total:
        return None
    return 100.0 * used / total


def _show(pct: float | None) -> str:
    # a latched warning may outlive the reading that raised it (an unreadable disk, say)
    return "usage unreadable now" if pct is None else f"{pct:.1f}% used"
