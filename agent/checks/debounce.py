"""State the checks keep between samples so that one odd reading never flips a verdict.

Three shapes cover every check: a condition that must hold for N polls and clear for M polls
(:class:`Latch`; :class:`LatchedGpuCondition` when the condition is per GPU and one finding
reports it), a counter that must rise by more than X within a time window
(:class:`WindowedIncrease`), and a hard fault that stays for the life of the process
(:class:`StickyFindings`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Protocol

from agent.sample import NodeSample
from gpuwarden_common.health import Finding, action_rank, severity_rank
from gpuwarden_common.wire import GpuState


def require_positive(**values: float) -> None:
    """Config validation shared by the checks' dataclasses: every value must be > 0."""
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


class LatchPolls(Protocol):
    """The part of a check's config that says how long a condition must hold or stay clear."""

    @property
    def raise_after_polls(self) -> int: ...

    @property
    def clear_after_polls(self) -> int: ...


def require_latch_polls(config: LatchPolls) -> None:
    """Validation for a config carrying :class:`LatchPolls`, named as the config's fields."""
    require_positive(
        raise_after_polls=config.raise_after_polls, clear_after_polls=config.clear_after_polls
    )


class Latch:
    """Per-key debounce with hysteresis.

    A key turns active after ``raise_after`` consecutive bad polls and inactive again only after
    ``clear_after`` consecutive clean polls; any other poll resets the opposite streak, so an
    alternating signal never changes the state in either direction.
    """

    def __init__(self, raise_after: int, clear_after: int) -> None:
        require_positive(raise_after=raise_after, clear_after=clear_after)
        self._raise_after = raise_after
        self._clear_after = clear_after
        self._active: dict[Hashable, bool] = {}
        self._streak: dict[Hashable, int] = {}

    def update(self, key: Hashable, bad: bool) -> bool:
        """Feed one poll's reading for ``key``; returns whether the condition is active now."""
        active = self._active.get(key, False)
        if bad == active:
            # the reading agrees with the state: any streak towards the other state is broken
            self._streak[key] = 0
            return active
        streak = self._streak.get(key, 0) + 1
        if streak >= (self._clear_after if active else self._raise_after):
            self._active[key] = not active
            self._streak[key] = 0
            return not active
        self._streak[key] = streak
        return active

    def is_active(self, key: Hashable) -> bool:
        return self._active.get(key, False)


class LatchedGpuCondition:
    """A per-GPU condition that reports a finding for each GPU on which it is latched.

    The check states the condition and how to word its finding; this keeps one :class:`Latch`
    streak per GPU. Lost GPUs are skipped: their readings are stale and the gpu_lost check
    speaks for them.
    """

    def __init__(
        self,
        polls: LatchPolls,
        condition: Callable[[GpuState], bool],
        finding: Callable[[GpuState], Finding],
    ) -> None:
        self._latch = Latch(polls.raise_after_polls, polls.clear_after_polls)
        self._condition = condition
        self._finding = finding

    def findings(self, sample: NodeSample) -> tuple[Finding, ...]:
        return tuple(
            self._finding(gpu)
            for gpu in sample.gpus
            if not gpu.lost and self._latch.update(gpu.index, self._condition(gpu))
        )


class WindowedIncrease:
    """How much a monotonic counter rose over the last ``window_s`` seconds, per key.

    The first reading of a key is its baseline, so what a counter held before the agent started
    never counts. A counter that goes down (a GPU reset clears volatile counters) starts a new
    baseline instead of reading as a negative rate.
    """

    def __init__(self, window_s: float, max_points: int = 4096) -> None:
        require_positive(window_s=window_s, max_points=max_points)
        self._window_s = window_s
        self._max_points = max_points
        self._points: dict[Hashable, deque[tuple[float, int]]] = {}

    def update(self, key: Hashable, ts: float, value: int) -> int:
        points = self._points.get(key)
        if points is None or (points and value < points[-1][1]):
            points = deque(maxlen=self._max_points)
            self._points[key] = points
        points.append((ts, value))
        start = ts - self._window_s
        # the baseline is the oldest reading inside the window: a rise is only counted when
        # it is known to have happened within it (so the window should span several polls)
        while len(points) > 1 and points[0][0] < start:
            points.popleft()
        return value - points[0][1]


def _strength(finding: Finding) -> tuple[int, int]:
    return (severity_rank(finding.severity), action_rank(finding.action))


class StickyFindings:
    """Hard faults, kept until the agent process ends (a reboot or the coordinator's recovery).

    One finding per (GPU, code); a later finding for the same key replaces the kept one only
    when it is stronger, so a sticky fault can escalate but never soften.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[int | None, str], Finding] = {}

    def add(self, finding: Finding) -> Finding:
        """Keep ``finding`` (or the stronger one already kept) and return what is kept."""
        key = (finding.gpu_index, finding.code)
        kept = self._kept.get(key)
        if kept is None or _strength(finding) > _strength(kept):
            self._kept[key] = finding
            return finding
        return kept

    def __bool__(self) -> bool:
        return bool(self._kept)

    def has(self, gpu_index: int | None, code: str) -> bool:
        return (gpu_index, code) in self._kept

    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._kept.values())
