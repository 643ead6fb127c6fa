"""Which nodes' marks on the cluster may not yet be what the coordinator decided.

A decision is made once, recorded once and applied to the model at once; bringing the
cluster into line with it is separate work that may take several attempts. :class:`MarkQueue`
holds that work, one item per node (a newer decision replaces an older one), with the
backoff between attempts counted from the moment an attempt *failed*, and at most one
attempt per node in flight, whatever the leadership did meanwhile. Pure bookkeeping: the
remediator does the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.actuators import MarkFact, NodeMark
from coordinator.audit import AuditRecord
from gpuwarden_common.backoff import backoff_delay


@dataclass(eq=False)
class MarkWork:
    """Bring ``node`` to ``mark`` for the reason ``fact``.

    ``resume`` is an action a restart cut off (started, never finished) for the same mark:
    the next attempt finishes that audit record instead of starting a new one.
    """

    node: str
    mark: NodeMark
    fact: MarkFact
    decision_id: int | None = None
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""
    resume: AuditRecord | None = None


class MarkQueue:
    def __init__(
        self, retry_base_s: float, retry_cap_s: float, rand: Callable[[], float] = random.random
    ) -> None:
        self._base = retry_base_s
        self._cap = retry_cap_s
        self._rand = rand
        self._work: dict[str, MarkWork] = {}
        self._in_flight: set[str] = set()

    def want(self, work: MarkWork) -> None:
        """``work`` replaces whatever was wanted of its node (an attempt already running for
        the old wish finishes, and its outcome is then ignored)."""
        self._work[work.node] = work

    def get(self, node: str) -> MarkWork | None:
        return self._work.get(node)

    def due(self, now: float) -> list[MarkWork]:
        """Work whose next attempt may start now, node by node in name order."""
        return sorted(
            (w for w in self._work.values()
             if w.node not in self._in_flight and w.not_before <= now),
            key=lambda w: w.node,
        )  # fmt: skip

    def start(self, work: MarkWork) -> bool:
        """Claim ``work``'s node for one attempt; False while another attempt runs there, or
        when ``work`` is no longer what is wanted."""
        if work.node in self._in_flight or self._work.get(work.node) is not work:
            return False
        self._in_flight.add(work.node)
        return True

    def finish(self, work: MarkWork, *, ok: bool, now: float, detail: str = "") -> float | None:
        """The attempt ended at ``now``. Returns when the next attempt may start, or None when
        there is none to make (done, or superseded meanwhile)."""
        self._in_flight.discard(work.node)
        work.resume = None  # whatever the outcome, the cut-off record is closed now
        if self._work.get(work.node) is not work:
            return None
        if ok:
            del self._work[work.node]
            return None
        work.attempts += 1
        work.last_error = detail
        work.not_before = now + backoff_delay(work.attempts - 1, self._base, self._cap,
                                              self._rand)  # fmt: skip
        return work.not_before

    def abandon(self, work: MarkWork) -> None:
        """The attempt was cut off (the coordinator is stopping): free the node, keep the
        work, so a later attempt or a restart finishes it."""
        self._in_flight.discard(work.node)

    def in_flight(self, node: str) -> bool:
        return node in self._in_flight

    def pending(self) -> list[MarkWork]:
        return sorted(self._work.values(), key=lambda w: w.node)

    def __len__(self) -> int:
        return len(self._work)
