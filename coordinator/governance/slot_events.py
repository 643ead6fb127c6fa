"""Where and when, in victim order, the nodes gain room for one more pod of a given size.

The victim search takes candidates in victim order until the preemptor's pods fit; with
pods of one size ``s`` they fit once the nodes hold ``n`` slots of ``s`` GPUs. A node's
slots grow only at the candidates on it: node ``j`` with ``b`` GPUs free gains its next
slot at the rank of the candidate that brings its free GPUs plus those of the candidates
before it past the next multiple of ``s``. So the rank at which the pods first fit is the
``n``-th smallest of those slot events over all nodes, and only the nodes with an event up
to it can matter for the choice.

:class:`SlotEvents` keeps, for one candidate list and one pod size, every node's events in
a heap, read again only for the nodes whose free GPUs or live candidates change. A
preemptor reads the first events it needs in O(need x log nodes), instead of walking every
candidate before them; in a cluster where room is scattered (a free GPU here, a borrowed
task there), walking them cost each preemptor thousands of steps. Internal to the engine.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from coordinator.governance.candidates import CandidateList


@dataclass(frozen=True, slots=True)
class Deviation:
    """One preemptor's view of a node where it differs from every other preemptor's: GPUs
    of its own victims in flight there, a candidate it may not take (the task that
    preempted it), GPUs that are not there for it."""

    extra: int = 0
    excluded: int = -1
    """A rank it may not take (-1: none)."""


_RANK = 64
_NODE = 32
_LOW = (1 << 32) - 1
"""A heap entry is one int: the event's rank, its node's number and the node's version
when read, in that order of significance (``rank << _RANK | node << _NODE | version``).
Ordered as the tuple of the three would be (nodes are numbered in name order), but ints
compare several times faster than tuples in the heap's sifts, and the GC does not track
them: a round pushes thousands."""


class NodeNumbers:
    """The round's healthy nodes numbered in name order, shared by its slot event
    indexes."""

    def __init__(self, healthy: Iterable[str]) -> None:
        self.names = sorted(healthy)
        self.of = {name: number for number, name in enumerate(self.names)}


class SlotEvents:
    """For one candidate list and one pod ``size``: every node's slot events, in a heap.

    A node's base is its free GPUs plus, for a team's own list, the live borrowed GPUs on
    it (a preemptor reaches its own team's tasks only after every borrowed one)."""

    def __init__(
        self,
        size: int,
        listing: CandidateList,
        free: Mapping[str, int],
        nodes: NodeNumbers,
        base_extra: Mapping[str, int] | None = None,
    ) -> None:
        self.size = size
        self._listing = listing
        self._on_node = listing.on_node
        self._free = free
        self._nodes = nodes
        self._extra: Mapping[str, int] = base_extra if base_extra is not None else {}
        self._heap: list[int] = []
        self._version = [0] * len(nodes.names)
        """Per node number, how often its events were read (entries of an older read are
        stale)."""
        self._dirty: set[str] = set(self._on_node)
        """Nodes whose events are to be read again before the next look (a node changes
        many times between looks, as tasks are placed)."""

    def base(self, node: str) -> int:
        return self._free.get(node, 0) + self._extra.get(node, 0)

    def refresh_all(self, nodes: Iterable[str]) -> None:
        """The nodes' free GPUs or live candidates changed: their events are read again
        before the next look (those it does not hold are passed over then)."""
        self._dirty.update(nodes)

    def _catch_up(self) -> None:
        """Reads the events of every changed node again (a plain loop: an index is built
        over thousands of nodes). All of them, not only the first: a look that takes a
        node's first event often needs its next ones, and reading them here, in one pass
        over the node's candidates, costs less than walking the node again at each look."""
        numbers, on_node, versions, heap = self._nodes.of, self._on_node, self._version, self._heap
        free, extra, size = self._free, self._extra, self.size
        tasks, dead, alive = self._listing.tasks, self._listing.dead, self._listing.alive_on
        for node in self._dirty:
            ranks = on_node.get(node)
            number = numbers.get(node)
            if ranks is None or number is None:
                continue  # not a candidate's node, or not healthy
            version = versions[number] = versions[number] + 1
            held = free.get(node, 0) + extra.get(node, 0)
            next_slot = (held // size + 1) * size
            if held + alive.get(node, 0) < next_slot:
                continue  # all its live candidates together make no slot: no events
            low = number << _NODE | version
            for rank in ranks:
                if not dead[rank]:
                    held += tasks[rank].placement[node]
                    while held >= next_slot:  # a candidate may bring several slots
                        heapq.heappush(heap, rank << _RANK | low)
                        next_slot += size
        self._dirty.clear()

    def events_on(self, node: str, deviation: Deviation) -> Iterator[int]:
        """The ranks at which ``node`` gains a slot, in order (a rank twice when one
        candidate brings two slots)."""
        listing, size = self._listing, self.size
        held = self.base(node) + deviation.extra
        slots = held // size
        tasks, dead = listing.tasks, listing.dead
        for rank in self._on_node.get(node, ()):
            if dead[rank] or rank == deviation.excluded:
                continue
            held += tasks[rank].placement[node]
            while held // size > slots:
                slots += 1
                yield rank

    def first_events(
        self,
        need: int,
        limit: int,
        deviations: Mapping[str, Deviation],
        through: int = -1,
    ) -> list[tuple[int, str]]:
        """The slot events in rank order, below rank ``limit``: up to the ``need``-th and
        every other one at its rank, and all those at ranks up to ``through`` (fewer when
        there are not so many), as (rank, node). ``deviations``: the preemptor's own view
        of some nodes."""
        found: list[tuple[int, str]] = []
        if need <= 0 and through < 0:
            return found
        if self._dirty:
            self._catch_up()
        heap, versions, names = self._heap, self._version, self._nodes.names
        # Every event of the deviating ones, as this preemptor sees them.
        side: list[tuple[int, str, Iterator[int]]] = []
        for node, deviation in sorted(deviations.items()):
            if node in self._nodes.of:
                self._push_next(side, node, self.events_on(node, deviation))
        popped: list[int] = []
        try:
            while True:
                main = None
                while heap:  # stale entries go for good, as they come to the top
                    top = heap[0]
                    number = top >> _NODE & _LOW
                    if top & _LOW != versions[number]:
                        heapq.heappop(heap)
                    elif deviations and names[number] in deviations:
                        popped.append(heapq.heappop(heap))  # this preemptor sees it differently
                    else:
                        main = top
                        break
                other = side[0] if side else None
                if main is not None and (other is None or main >> _RANK <= other[0]):
                    rank, node = main >> _RANK, names[main >> _NODE & _LOW]
                    popped.append(heapq.heappop(heap))
                elif other is not None:
                    rank, node, later = heapq.heappop(side)
                    self._push_next(side, node, later)
                else:
                    break
                if rank >= limit or (
                    len(found) >= need and rank > through and (not found or rank > found[-1][0])
                ):
                    break
                found.append((rank, node))
        finally:
            for entry in popped:
                heapq.heappush(heap, entry)
        return found

    @staticmethod
    def _push_next(
        side: list[tuple[int, str, Iterator[int]]], node: str, events: Iterator[int]
    ) -> None:
        rank = next(events, None)
        if rank is not None:
            heapq.heappush(side, (rank, node, events))
