"""Which nodes the cluster itself knows: the back end's inventory, kept fresh.

Agents name themselves, and on a broker without an ACL anyone can name any node. The cluster
(Kubernetes' node list) is the authority on which machines exist: a node outside it is not
counted nor acted on (:meth:`coordinator.model.ClusterModel.counts`). The list is read every
``refresh_s``, and sooner (at most every ``min_gap_s``) when an agent the list does not name
starts reporting, so a node that just joined counts within seconds while a flood of invented
names costs one LIST per ``min_gap_s``, never a request per name. A back end without an
inventory (the local actuator) answers None: then every reporting node counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from gpuwarden_common.aio import raise_if_cancelled, wait_event
from gpuwarden_common.backoff import backoff_delay

log = structlog.get_logger("coordinator.inventory")

ListNodes = Callable[[], Awaitable[frozenset[str] | None]]


class NodeInventory:
    def __init__(
        self,
        list_nodes: ListNodes,
        on_change: Callable[[frozenset[str] | None], None],
        *,
        refresh_s: float = 60.0,
        min_gap_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list_nodes = list_nodes
        self._on_change = on_change
        self._refresh_s = refresh_s
        self._min_gap_s = min_gap_s
        self._clock = clock
        self._asked = asyncio.Event()
        self.members: frozenset[str] | None = None
        self.reads = 0

    def unknown(self, node: str) -> bool:
        """True when the inventory says ``node`` does not exist (asks for a fresh read)."""
        if self.members is None or node in self.members:
            return False
        self._asked.set()
        return True

    async def run(self) -> None:
        failures = 0
        while True:
            raise_if_cancelled()
            try:
                members = await self._list_nodes()
            except Exception as exc:  # the API is down: keep what we knew
                failures += 1
                log.warning("cannot read the cluster's node list", error=str(exc))
                await asyncio.sleep(backoff_delay(failures, 1.0, self._refresh_s))
                continue
            failures = 0
            self.reads += 1
            if members is None:
                return  # no inventory in this back end: nothing to keep fresh
            if members != self.members:
                self.members = members
                self._on_change(members)
            read_at = self._clock()
            self._asked.clear()
            await wait_event(self._asked, self._refresh_s)
            # asked early: still never more often than min_gap_s
            await asyncio.sleep(max(0.0, read_at + self._min_gap_s - self._clock()))
