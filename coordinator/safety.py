"""Safety rules that stand between a decision and a real machine (DESIGN.md "Safety rules").

:class:`SafetyGate` answers one question for each new automatic remediation (a transition
with ``gated`` set): may it go ahead now? It says no when

- more agents are silent than ``--max-unhealthy`` allows: that is what a broker or network
  fault looks like, and it must never cordon the fleet (``mass-silence``);
- one more node out would exceed ``--max-unhealthy`` (``max-unhealthy``);
- ``rate_per_minute`` remediations were already allowed in the last 60 s (``rate-limited``).

The first two pause remediation. A pause is an episode: the denial that starts it has
``new_pause`` set (send one alert), the following ones do not; :meth:`SafetyGate.review`,
called once per decision round, ends it when its cause has cleared and returns it (send one
"resumed" alert). Recoveries, escalations of nodes already out and operator actions never
pass through the gate (:meth:`SafetyGate.admit` lets them by), so a pause never keeps a
healthy node out.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from coordinator.lifecycle import Transition

RATE_WINDOW_S = 60.0
_FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True, slots=True)
class MaxUnhealthy:
    """``--max-unhealthy``: a node count (``"3"``) or a share of the fleet (``"10%"``)."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, text: str) -> MaxUnhealthy:
        match = _FORM.match(text)
        if match is None:
            raise ValueError(
                f"--max-unhealthy expects a node count like '3' or a percentage like '10%', "
                f"got {text!r}"
            )
        number, percent = float(match.group(1)), bool(match.group(2))
        if percent and number > 100:
            raise ValueError(f"--max-unhealthy percentage must be 0-100%, got {text!r}")
        if not percent and not number.is_integer():
            raise ValueError(
                f"--max-unhealthy count must be a whole number of nodes, got {text!r} "
                f"(write '{number:g}%' for a percentage)"
            )
        return cls(number, percent)

    def limit(self, total_nodes: int) -> int:
        """Most nodes that may be out at once. A percentage rounds down but never below one
        node (0% excepted): "10%" of 250 nodes is 25, of 4 nodes 1. Rounding 4 nodes down to 0
        would never take out a node with XID 79, only pause; Cluster API's MachineHealthCheck
        likewise remediates one machine of a small pool. A count is taken as given."""
        if self.percent:
            share = math.floor(total_nodes * self.value / 100 + 1e-9)
            return max(share, 1) if self.value > 0 else 0
        return int(self.value)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else f"{int(self.value)}"


def mass_silence(silent_count: int, total: int, threshold: MaxUnhealthy | str) -> bool:
    """More agents silent than ``threshold`` allows out: blame the broker or the network."""
    limit = threshold if isinstance(threshold, MaxUnhealthy) else MaxUnhealthy.parse(threshold)
    return silent_count > limit.limit(total)


class DenyReason(StrEnum):
    MASS_SILENCE = "mass-silence"
    MAX_UNHEALTHY = "max-unhealthy"
    RATE_LIMITED = "rate-limited"


@dataclass(frozen=True, slots=True)
class Pause:
    reason: DenyReason
    message: str
    since: float


@dataclass(frozen=True, slots=True)
class Allow:
    pass


@dataclass(frozen=True, slots=True)
class Deny:
    """``new_pause``: this denial started a pause episode; alert once, on this one."""

    reason: DenyReason
    message: str
    new_pause: bool = False


class SafetyGate:
    def __init__(self, max_unhealthy: str | MaxUnhealthy = "10%", rate_per_minute: int = 10):
        if rate_per_minute < 1:
            raise ValueError(f"rate_per_minute must be at least 1, got {rate_per_minute}")
        self.max_unhealthy = (
            max_unhealthy
            if isinstance(max_unhealthy, MaxUnhealthy)
            else MaxUnhealthy.parse(max_unhealthy)
        )
        self.rate_per_minute = rate_per_minute
        self._allowed_at: deque[float] = deque()
        self._pause: Pause | None = None

    @property
    def paused(self) -> Pause | None:
        """The pause in effect, for the cluster health feed (None when not paused)."""
        return self._pause

    def allow(
        self,
        new_remediation_node: str,
        nodes_out_now: int,
        total_nodes: int,
        now: float,
        *,
        silent_nodes: int = 0,
    ) -> Allow | Deny:
        """May ``new_remediation_node`` be taken out now? ``nodes_out_now`` counts nodes
        already out of service (including ones allowed earlier in this round),
        ``silent_nodes`` in-service nodes whose agent is silent. An Allow is counted against
        the rate limit: call this only when about to act."""
        cause = self._pause_cause(nodes_out_now, total_nodes, silent_nodes)
        if cause is not None:
            reason, message = cause
            starts = self._pause is None or self._pause.reason is not reason
            if starts:
                self._pause = Pause(reason, message, now)
            return Deny(reason, f"{new_remediation_node}: {message}", new_pause=starts)
        while self._allowed_at and now - self._allowed_at[0] >= RATE_WINDOW_S:
            self._allowed_at.popleft()
        if len(self._allowed_at) >= self.rate_per_minute:
            return Deny(
                DenyReason.RATE_LIMITED,
                f"{new_remediation_node}: {self.rate_per_minute} remediations already in the "
                f"last minute; retry later",
            )
        self._allowed_at.append(now)
        return Allow()

    def admit(
        self,
        transition: Transition,
        nodes_out_now: int,
        total_nodes: int,
        now: float,
        *,
        silent_nodes: int = 0,
    ) -> Allow | Deny:
        """:meth:`allow` for gated transitions; every other transition is let by."""
        if not transition.gated:
            return Allow()
        return self.allow(
            transition.node, nodes_out_now, total_nodes, now, silent_nodes=silent_nodes
        )

    def review(
        self, nodes_out_now: int, total_nodes: int, now: float, *, silent_nodes: int = 0
    ) -> Pause | None:
        """End the pause when its cause has cleared; returns the pause that ended, once."""
        if self._pause is None:
            return None
        if self._pause_cause(nodes_out_now, total_nodes, silent_nodes) is not None:
            return None
        ended, self._pause = self._pause, None
        return ended

    def _pause_cause(
        self, nodes_out_now: int, total_nodes: int, silent_nodes: int
    ) -> tuple[DenyReason, str] | None:
        limit = self.max_unhealthy.limit(total_nodes)
        if silent_nodes > limit:
            return (
                DenyReason.MASS_SILENCE,
                f"remediation paused: {silent_nodes} of {total_nodes} agents are silent, more "
                f"than --max-unhealthy {self.max_unhealthy} ({limit}); suspect the broker or "
                f"the network, not the nodes",
            )
        if nodes_out_now + 1 > limit:
            return (
                DenyReason.MAX_UNHEALTHY,
                f"remediation paused: {nodes_out_now} of {total_nodes} nodes are already out "
                f"and --max-unhealthy {self.max_unhealthy} allows {limit}",
            )
        return None
