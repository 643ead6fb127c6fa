"""The health vocabulary of DESIGN.md: severities, actions, health states and findings.

Orderings live here, once, so that "worst" and "strongest" mean the same thing on both sides
of the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated

import msgspec
from msgspec import Meta


class Severity(StrEnum):
    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"


class Action(StrEnum):
    """What it takes to fix a fault, weakest first."""

    NONE = "none"
    RESTART_APP = "restart_app"
    RESET_GPU = "reset_gpu"
    REBOOT = "reboot"
    REPLACE = "replace"


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"


_SEVERITY_RANK = {Severity.OK: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_ACTION_RANK = {a: i for i, a in enumerate(Action)}
# unknown ranks between degraded and unhealthy: we cannot vouch for the device, but nothing
# proves it broken either, so it must not hide a real failure nor be hidden by a warning.
_HEALTH_RANK = {Health.HEALTHY: 0, Health.DEGRADED: 1, Health.UNKNOWN: 2, Health.UNHEALTHY: 3}
_SEVERITY_HEALTH = {
    Severity.OK: Health.HEALTHY,
    Severity.WARNING: Health.DEGRADED,
    Severity.CRITICAL: Health.UNHEALTHY,
}


# a health as the severity an event reports it with; unknown is a warning, not a fault
_HEALTH_SEVERITY = {
    Health.HEALTHY: Severity.OK,
    Health.DEGRADED: Severity.WARNING,
    Health.UNKNOWN: Severity.WARNING,
    Health.UNHEALTHY: Severity.CRITICAL,
}


def severity_rank(severity: Severity) -> int:
    return _SEVERITY_RANK[severity]


def action_rank(action: Action) -> int:
    return _ACTION_RANK[action]


def health_rank(health: Health) -> int:
    return _HEALTH_RANK[health]


def strongest_action(actions: Iterable[Action]) -> Action:
    return max(actions, key=action_rank, default=Action.NONE)


def worst_health(healths: Iterable[Health]) -> Health:
    return max(healths, key=health_rank, default=Health.HEALTHY)


def health_of_severity(severity: Severity) -> Health:
    return _SEVERITY_HEALTH[severity]


def severity_of_health(health: Health) -> Severity:
    return _HEALTH_SEVERITY[health]


# gc=False: untracked by the cyclic collector, as the wire's structs are (see wire._Struct)
class Finding(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One conclusion of one check about one GPU (gpu_index set) or the host (gpu_index None).

    A check that could not run yields severity ``warning`` with ``unknown=True``: the device is
    then of unknown health, which is not the same as broken.
    """

    check: Annotated[str, Meta(min_length=1, max_length=64)]
    severity: Severity
    code: Annotated[str, Meta(min_length=1, max_length=64)]
    message: Annotated[str, Meta(max_length=1024)]
    action: Action = Action.NONE
    gpu_index: Annotated[int, Meta(ge=0, le=1023)] | None = None
    unknown: bool = False

    @property
    def health(self) -> Health:
        if self.unknown:
            return Health.UNKNOWN
        return health_of_severity(self.severity)


def summarize(findings: Iterable[Finding]) -> tuple[Health, Action]:
    """A set of findings' health (the worst) and suggested action (the strongest)."""
    items = list(findings)
    return (
        worst_health(f.health for f in items),
        strongest_action(f.action for f in items),
    )
