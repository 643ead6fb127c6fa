"""The one retry delay every reconnect and API retry uses."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential with equal jitter: half fixed, half random. Never zero (no hot loop when a
    peer is down), never in lockstep (a fleet restarted at once does not retry together)."""
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, 20))
    return ceiling / 2 + rand() * ceiling / 2
