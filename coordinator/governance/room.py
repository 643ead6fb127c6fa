"""Room for a preemptor's pods on the nodes, as the engine tries victims for it.

A preemptor with capacity per node needs victims that free enough GPUs *and* leave room for
its pods: :class:`Room` is an overlay on the round's :class:`FreeGpus` that counts the GPUs
of the victims tried so far as leaving, and answers whether the pods fit and which running
tasks could still help. Internal to the engine.

Whether pods fit is the placement's (:mod:`.placement`, best fit, largest pods first). When
every pod size divides the next larger one (one size; 1, 2, 4 and 8 GPUs; 1 and 8), that
placement fits exactly when, for each size ``s`` of the gang, the nodes hold as many
``s``-GPU slots as the pods of size ``s`` or more fill: bigger pods use whole multiples of
``s`` on a node, so nothing is wasted. Those counts change by a few additions per victim,
so the room keeps them instead of placing the pods again and again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

from coordinator.governance.placement import FreeGpus


@dataclass(frozen=True, slots=True)
class PodShape:
    """A gang's pods that ask for GPUs, as a room reads them (one per distinct gang shape
    in a round, not one per preemptor)."""

    sizes: tuple[int, ...]
    uniform: int
    """The size of every pod when they are all the same, else 0."""
    smallest: int
    needs: tuple[tuple[int, int], ...]
    """When each pod size divides the next larger one: for each size ``s``, largest first,
    the ``s``-GPU slots the pods of size ``s`` or more fill. Empty otherwise."""

    @classmethod
    def of(cls, pod_gpus: Sequence[int]) -> PodShape:
        sizes = tuple(gpus for gpus in pod_gpus if gpus > 0)
        first = sizes[0] if sizes else 0
        uniform = first if all(gpus == first for gpus in sizes) else 0
        distinct = sorted(set(sizes), reverse=True)
        needs: tuple[tuple[int, int], ...] = ()
        if all(larger % smaller == 0 for larger, smaller in pairwise(distinct)):
            needs = tuple(
                (size, -(-sum(gpus for gpus in sizes if gpus >= size) // size)) for size in distinct
            )
        return cls(sizes, uniform, min(sizes, default=0), needs)


class Room:
    """The free GPUs per node as they will be once some running tasks are gone, and
    whether a task's pods fit on them, as an overlay on the round's :class:`FreeGpus`
    (victims leave only after their grace, so their GPUs are never free to anyone else).

    A preemptor may try dozens of victims, so when its pod sizes divide each other the
    overlay keeps the count of slots of each size up to date as victims come and go: each
    step is a few additions instead of a placement. Other mixes are placed for real and
    put back."""

    def __init__(self, slots: FreeGpus, healthy: Mapping[str, int], pods: PodShape) -> None:
        self._slots = slots
        self._free = slots.by_node
        self._healthy = healthy
        self._pods = pods.sizes
        self._size = pods.uniform
        self.smallest = pods.smallest
        self.size = pods.uniform
        """The size of every pod when they are all the same, else 0."""
        self.count = len(pods.sizes)
        """Pods that ask for GPUs."""
        self.needs = pods.needs
        self._leaving: dict[str, int] = {}
        """GPUs per node that will be free once the victims tried so far are gone."""
        self._in_flight: dict[str, int] = {}
        """Of those, the GPUs of the preemptor's victims already leaving: no candidate is
        among them, so they add to what the candidates could free (see :meth:`may_help`)."""
        # Slots of each needed size now, plus what the leaving GPUs add. Counted at the
        # first fit (many rooms never get that far).
        self._slots_now: list[int] | None = None
        self._slots_gained = [0] * len(pods.needs)
        self._could_free_on: Mapping[str, int] = {}
        self.short_of_gpus_only = False
        """A fit failed for want of GPUs alone, with every bigger slot there (pods of one
        GPU in a gang of several sizes): see :mod:`.preemption`."""
        self.flags_short_of_gpus = not pods.uniform and bool(pods.needs) and pods.needs[-1][0] == 1
        """Whether :meth:`fits` may set :attr:`short_of_gpus_only` (else it only reads)."""

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

    def restart(self) -> None:
        """Back to no victim tried (the victims in flight stay)."""
        in_flight = self._in_flight
        self._leaving = {}
        self._in_flight = {}
        self._slots_gained = [0] * len(self.needs)
        self.short_of_gpus_only = False
        self.add_in_flight(in_flight)

    # add, remove and fits run for every victim tried and pruned (thousands in a round):
    # each does its own arithmetic rather than call a shared helper.

    def add(self, placement: Mapping[str, int]) -> None:
        """A task's GPUs that will be free (a node that is down frees nothing)."""
        leaving, healthy, free = self._leaving, self._healthy, self._free
        size, gained = self._size, self._slots_gained
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            before = leaving.get(node, 0)
            leaving[node] = before + gpus
            if size:
                on = free.get(node, 0) + before
                gained[0] += (on + gpus) // size - on // size
            elif gained:
                on = free.get(node, 0) + before
                for index, (each, _) in enumerate(self.needs):
                    gained[index] += (on + gpus) // each - on // each

    def add_all(self, placements: Iterable[Mapping[str, int]]) -> None:
        """As :meth:`add` for each, with each node's GPUs added up first: the slots a node
        gains from several tasks are those of their sum, counted once (a room step takes
        several victims on each node it makes room on)."""
        merged: dict[str, int] = {}
        for placement in placements:
            for node, gpus in placement.items():
                if gpus > 0:
                    merged[node] = merged.get(node, 0) + gpus
        self.add(merged)

    def remove(self, placement: Mapping[str, int]) -> None:
        """The inverse of :meth:`add`."""
        leaving, healthy, free = self._leaving, self._healthy, self._free
        size, gained = self._size, self._slots_gained
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            before = leaving.get(node, 0)
            leaving[node] = before - gpus
            if size:
                on = free.get(node, 0) + before
                gained[0] -= on // size - (on - gpus) // size
            elif gained:
                on = free.get(node, 0) + before
                for index, (each, _) in enumerate(self.needs):
                    gained[index] -= on // each - (on - gpus) // each

    def fits(self) -> bool:
        if not self._pods:
            return True
        needs = self.needs
        if needs:
            now = self._slots_now
            if now is None:
                now = self._slots_now = [
                    self._slots.slots_for(size, enough=count) for size, count in needs
                ]
            gained = self._slots_gained
            if self._size:
                return now[0] + gained[0] >= needs[0][1]
            # Sizes go largest first, so one-GPU slots, if needed, come last: any size
            # short before them settles the answer (and they are not short alone).
            for (size, count), have, more in zip(needs, now, gained, strict=True):
                if have + more < count:
                    if size == 1:
                        self.short_of_gpus_only = True
                    return False
            return True
        leaving = self._leaving_now()
        self._slots.release(leaving)
        try:
            return self._slots.fits(self._pods)
        finally:
            self._slots.take(leaving)

    def fits_without(self, placement: Mapping[str, int]) -> bool:
        """Whether the pods still fit without that task's GPUs; if so they stay out.

        The pruning asks this of every victim and keeps most of them: with slot counts of
        several sizes, the slots the task's GPUs make are counted first and the room
        changes only when they can go (rather than take them out and put them back)."""
        needs = self.needs
        if self._size or not needs or not self._pods:
            # one size: a removal is one addition, as cheap as counting it first
            self.remove(placement)
            if self.fits():
                return True
            self.add(placement)
            return False
        if len(placement) == 1:  # most tasks run on one node
            ((node, gpus),) = placement.items()
            if gpus > 0 and node in self._healthy:
                return self._fits_without_on(node, gpus)
        leaving, healthy, free = self._leaving, self._healthy, self._free
        now, gained = self._counted_slots(), self._slots_gained
        # Size by size, largest first, as fits() reads them: the first short size
        # settles it (one-GPU slots come last: alone short, they say so).
        lost: list[int] = []
        for index, (size, count) in enumerate(needs):
            less = 0
            for node, gpus in placement.items():
                if gpus > 0 and node in healthy:
                    on = free.get(node, 0) + leaving.get(node, 0)
                    less += on // size - (on - gpus) // size
            if now[index] + gained[index] - less < count:
                if size == 1:
                    self.short_of_gpus_only = True
                return False
            lost.append(less)
        for node, gpus in placement.items():
            if gpus > 0 and node in healthy:
                leaving[node] = leaving.get(node, 0) - gpus
        for index, less in enumerate(lost):
            gained[index] -= less
        return True

    def _fits_without_on(self, node: str, gpus: int) -> bool:
        """:meth:`fits_without` for a task's ``gpus`` on one healthy node: its free and
        leaving GPUs read once for every size."""
        needs, now, gained = self.needs, self._counted_slots(), self._slots_gained
        on = self._free.get(node, 0) + self._leaving.get(node, 0)
        lost: list[int] = []
        for index, (size, count) in enumerate(needs):
            less = on // size - (on - gpus) // size
            if now[index] + gained[index] - less < count:
                if size == 1:
                    self.short_of_gpus_only = True
                return False
            lost.append(less)
        self._leaving[node] = self._leaving.get(node, 0) - gpus
        for index, less in enumerate(lost):
            gained[index] -= less
        return True

    def _counted_slots(self) -> list[int]:
        """The slots of each needed size the free GPUs hold now (counted once a room)."""
        now = self._slots_now
        if now is None:
            now = self._slots_now = [
                self._slots.slots_for(size, enough=count) for size, count in self.needs
            ]
        return now

    def hold(self) -> tuple[int, list[str]]:
        """Takes out of the round's free GPUs those free now that a placement of the pods
        uses besides the leaving ones, and returns how many, and the nodes whose free GPUs
        changed: no later task of the round is placed on GPUs a preemptor counts on."""
        leaving = self._leaving_now()
        self._slots.release(leaving)
        placed = self._slots.place(self._pods)
        if placed is None:
            self._slots.take(leaving)
            return 0, []
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
        held = sum(max(0, gpus - leaving.get(node, 0)) for node, gpus in placed.items())
        return held, sorted(node for node, gpus in placed.items() if gpus > leaving.get(node, 0))

    def _leaving_now(self) -> dict[str, int]:
        return {node: gpus for node, gpus in self._leaving.items() if gpus > 0}
