"""Room for a preemptor's pods on the nodes, as the engine tries victims for it.

A preemptor with capacity per node needs victims that free enough GPUs *and* leave room for
its pods: :class:`Room` is an overlay on the round's :class:`FreeGpus` that counts the GPUs
of the victims tried so far as leaving, and answers whether the pods fit and which running
tasks could still help. :class:`Reach` answers, once per task, whether it could help any
preemptor of the round at all. Internal to :mod:`coordinator.governance.engine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from coordinator.governance.placement import FreeGpus


@dataclass(frozen=True, slots=True)
class PodShape:
    """A gang's pods that ask for GPUs, as a room reads them (one per distinct gang shape
    in a round, not one per preemptor)."""

    sizes: tuple[int, ...]
    uniform: int
    """The size of every pod when they are all the same, else 0."""
    smallest: int

    @classmethod
    def of(cls, pod_gpus: Sequence[int]) -> PodShape:
        sizes = tuple(gpus for gpus in pod_gpus if gpus > 0)
        first = sizes[0] if sizes else 0
        uniform = first if all(gpus == first for gpus in sizes) else 0
        return cls(sizes, uniform, min(sizes, default=0))


class Room:
    """The free GPUs per node as they will be once some running tasks are gone, and
    whether a task's pods fit on them, as an overlay on the round's :class:`FreeGpus`
    (victims leave only after their grace, so their GPUs are never free to anyone else).

    A preemptor may try dozens of victims, so for pods of one size the overlay keeps the
    count of pod-sized slots up to date as victims come and go: each step is a few
    additions instead of a placement. Mixed sizes are placed for real and put back."""

    def __init__(self, slots: FreeGpus, healthy: Mapping[str, int], pods: PodShape) -> None:
        self._slots = slots
        self._free = slots.by_node
        self._healthy = healthy
        self._pods = pods.sizes
        self._size = pods.uniform
        self.smallest = pods.smallest
        self._leaving: dict[str, int] = {}
        """GPUs per node that will be free once the victims tried so far are gone."""
        self._in_flight: dict[str, int] = {}
        """Of those, the GPUs of the preemptor's victims already leaving: no candidate is
        among them, so they add to what the candidates could free (see :meth:`may_help`)."""
        # Pod-sized slots now, plus what the leaving GPUs add (uniform pods only). Counted at
        # the first fit (many rooms never get that far), and only until the pods fit:
        # leaving GPUs only ever add slots, so more changes nothing.
        self._slots_now: int | None = None
        self._slots_gained = 0
        self._could_free_on: Mapping[str, int] = {}

    def rule_out(self, could_free_on: Mapping[str, int]) -> None:
        """Every running GPU that could be freed at all, per node (see :meth:`may_help`)."""
        self._could_free_on = could_free_on

    def may_help(self, placement: Mapping[str, int]) -> bool:
        """Whether freeing that task's GPUs could ever matter: some node of it could hold
        the smallest pod once every candidate there were gone. A task on nodes that never
        could is not worth trying: it would only be pruned again.

        A node counts its free GPUs, those of the preemptor's victims in flight and those
        of every candidate on it. The candidates tried so far are among the latter, so
        they are not counted again: counted twice, a node of seven borrowed GPUs looked
        able to hold eight, and every preemptor tried every task on it."""
        healthy, free, in_flight = self._healthy, self._free, self._in_flight
        could = self._could_free_on
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            if free.get(node, 0) + in_flight.get(node, 0) + could.get(node, 0) >= self.smallest:
                return True
        return False

    def add_in_flight(self, placement: Mapping[str, int]) -> None:
        """A victim already preempted for this preemptor, still leaving: its GPUs will be
        free for it, as :meth:`add`'s are."""
        self.add(placement)
        in_flight, healthy = self._in_flight, self._healthy
        for node, gpus in placement.items():
            if gpus > 0 and node in healthy:
                in_flight[node] = in_flight.get(node, 0) + gpus

    # add, remove and fits run for every victim tried and pruned (thousands in a round):
    # each does its own arithmetic rather than call a shared helper.

    def add(self, placement: Mapping[str, int]) -> None:
        """A task's GPUs that will be free (a node that is down frees nothing)."""
        size, leaving, healthy, free = self._size, self._leaving, self._healthy, self._free
        gained = 0
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            before = leaving.get(node, 0)
            leaving[node] = before + gpus
            if size:
                on = free.get(node, 0)
                gained += (on + before + gpus) // size - (on + before) // size
        self._slots_gained += gained

    def remove(self, placement: Mapping[str, int]) -> None:
        """The inverse of :meth:`add`."""
        size, leaving, healthy, free = self._size, self._leaving, self._healthy, self._free
        lost = 0
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            before = leaving.get(node, 0)
            leaving[node] = before - gpus
            if size:
                on = free.get(node, 0)
                lost += (on + before) // size - (on + before - gpus) // size
        self._slots_gained -= lost

    def fits(self) -> bool:
        if not self._pods:
            return True
        if self._size:
            if self._slots_now is None:
                self._slots_now = self._slots.slots_for(self._size, enough=len(self._pods))
            return self._slots_now + self._slots_gained >= len(self._pods)
        leaving = self._leaving_now()
        self._slots.release(leaving)
        try:
            return self._slots.fits(self._pods)
        finally:
            self._slots.take(leaving)

    def fits_without(self, placement: Mapping[str, int]) -> bool:
        """Whether the pods still fit without that task's GPUs; if so they stay out."""
        self.remove(placement)
        if self.fits():
            return True
        self.add(placement)
        return False

    def hold(self) -> int:
        """Takes out of the round's free GPUs those free now that a placement of the pods
        uses besides the leaving ones, and returns how many: no later task of the round
        is placed on GPUs a preemptor counts on."""
        leaving = self._leaving_now()
        self._slots.release(leaving)
        placed = self._slots.place(self._pods)
        if placed is None:
            self._slots.take(leaving)
            return 0
        # The placement is taken now, on the leaving GPUs and on free ones. What stays
        # taken must be only the free ones it uses: the leaving GPUs it leaves unused go
        # back (one pass over the round's free GPUs instead of undoing it all and redoing
        # the part that is held).
        unused = {
            node: gpus - placed.get(node, 0)
            for node, gpus in leaving.items()
            if gpus > placed.get(node, 0)
        }
        self._slots.take(unused)
        return sum(max(0, gpus - leaving.get(node, 0)) for node, gpus in placed.items())

    def reach(self, could_free_on: Mapping[str, int], in_flight_on: Mapping[str, int]) -> Reach:
        """The :class:`Reach` test for preemptors with pods like these, who count
        ``could_free_on`` as candidates (``in_flight_on``: every victim still leaving)."""
        return Reach(self._slots, self._healthy, could_free_on, in_flight_on, self.smallest)

    def _leaving_now(self) -> dict[str, int]:
        return {node: gpus for node, gpus in self._leaving.items() if gpus > 0}


class Reach:
    """Whether a running task could ever matter to the room of a preemptor, for the
    preemptors of a round that count the same candidates per node and have the same
    smallest pod: the test that lets the engine drop a task from their search for good."""

    def __init__(
        self,
        slots: FreeGpus,
        healthy: Mapping[str, int],
        could_free_on: Mapping[str, int],
        in_flight_on: Mapping[str, int],
        smallest: int,
    ) -> None:
        self._free = slots.by_node
        self._healthy = healthy
        self._could_free_on = could_free_on
        self._in_flight_on = in_flight_on
        self._smallest = smallest

    def never_helps(self, placement: Mapping[str, int]) -> bool:
        """True when, for every such preemptor, no node of the task (``placement``, its
        GPUs per node) can reach the smallest pod in :meth:`Room.may_help`. There a node
        counts its free GPUs, which only shrink in a round; the GPUs of every candidate on
        it; and those of the preemptor's victims in flight, at most every victim in flight
        on it."""
        free, could, in_flight = self._free, self._could_free_on, self._in_flight_on
        for node, gpus in placement.items():
            if gpus <= 0 or node not in self._healthy:
                continue
            most = free.get(node, 0) + could.get(node, 0) + in_flight.get(node, 0)
            if most >= self._smallest:
                return False
        return True
