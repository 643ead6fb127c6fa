"""The check interface. One check per module; ``agent.checks.ALL_CHECKS`` lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from agent.sample import NodeSample
from gpuwarden_common.health import Finding


@dataclass(frozen=True)
class CheckResult:
    check: str
    findings: tuple[Finding, ...]
    duration_s: float = 0.0
    error: str | None = None


class Check(Protocol):
    """A health check. Instances may keep state between samples (debounce windows)."""

    name: str

    def is_supported(self, sample: NodeSample) -> bool:
        """False when this node cannot answer the question (no NVLink, ECC off...)."""
        ...

    def check(self, sample: NodeSample) -> tuple[Finding, ...]:
        """Findings for this sample. May raise; the runner turns that into an unknown."""
        ...
