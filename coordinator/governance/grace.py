"""A victim's checkpoint grace as its pods ask for it, read against the policy.

The ``gpuwarden.io/checkpoint-grace-seconds`` annotation asks for a grace in seconds. A
value above ``preemption.maxGraceSeconds`` is capped to it; one that is not a number of
seconds (not a number, negative, not finite) is refused and the policy default is used. In
both cases the reading says so, in words meant for the pod's owner (the Kubernetes
governor puts them in an Event on the pod). Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.governance.policy import PreemptionSettings

ANNOTATION = "gpuwarden.io/checkpoint-grace-seconds"


@dataclass(frozen=True)
class GraceReading:
    asked: float | None
    """What the pod asked for, when it is a number of seconds (else None)."""
    seconds: float
    """The grace the victim gets."""
    problem: str | None
    """Why that is not what was written, for the pod's owner; None when it is."""


def read_grace(written: str | None, settings: PreemptionSettings) -> GraceReading:
    """The grace for an annotation value (``None``: no annotation)."""
    default, most = settings.default_grace_seconds, settings.max_grace_seconds
    if written is None:
        return GraceReading(None, settings.grace_for(None), None)
    try:
        asked = float(written.strip())
    except ValueError:
        asked = math.nan
    if not math.isfinite(asked):
        return GraceReading(
            None,
            settings.grace_for(None),
            f"{ANNOTATION} {written!r} is not a number of seconds: refused; the policy "
            f"default of {default:g} s is used instead",
        )
    if asked < 0:
        return GraceReading(
            None,
            settings.grace_for(None),
            f"{ANNOTATION} {written!r} is negative: refused; the policy default of "
            f"{default:g} s is used instead",
        )
    if asked > most:
        return GraceReading(
            asked,
            most,
            f"{ANNOTATION} {asked:g} s is above the policy maximum "
            f"(preemption.maxGraceSeconds): {most:g} s is used instead",
        )
    return GraceReading(asked, asked, None)
