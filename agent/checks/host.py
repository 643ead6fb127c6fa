"""The host around the GPUs: a full disk (checkpoints, images) and memory pressure."""

from __future__ import annotations

from dataclasses import dataclass

from agent.checks.debounce import Latch, require_positive
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
        require_positive(
            disk_full_pct=self.disk_full_pct,
            memory_pct=self.memory_pct,
            raise_after_polls=self.raise_after_polls,
            clear_after_polls=self.clear_after_polls,
        )


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
        findings: list[Finding] = []
        disk_pct = _percent(host.disk_used_bytes, host.disk_total_bytes)
        if self._disk.update(
            _HOST, disk_pct is not None and disk_pct >= self._config.disk_full_pct
        ):
            findings.append(
                Finding(
                    check=self.name,
                    severity=Severity.WARNING,
                    code="HOST-DISK-FULL",
                    message=f"disk {host.disk_path}: {_show(disk_pct)}"
                    f" (limit {self._config.disk_full_pct:g}%)",
                    action=Action.NONE,
                )
            )
        memory_pct = _percent(host.memory_used_bytes, host.memory_total_bytes)
        if self._memory.update(
            _HOST, memory_pct is not None and memory_pct >= self._config.memory_pct
        ):
            findings.append(
                Finding(
                    check=self.name,
                    severity=Severity.WARNING,
                    code="HOST-MEMORY",
                    message=f"host memory: {_show(memory_pct)}"
                    f" (limit {self._config.memory_pct:g}%)",
                    action=Action.NONE,
                )
            )
        return tuple(findings)


def _percent(used: int | None, total: int | None) -> float | None:
    if used is None or not total:
        return None
    return 100.0 * used / total


def _show(pct: float | None) -> str:
    # a latched warning may outlive the reading that raised it (an unreadable disk, say)
    return "usage unreadable now" if pct is None else f"{pct:.1f}% used"
