"""The room steps of the victim search read from slot events (:mod:`.slot_events`) instead
of walking candidates, with the candidates that matter picked out as the rule's walk and
pruning would keep them. Internal to :mod:`.preemption`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from coordinator.governance.candidates import BorrowedVictims, CandidateList, OwnVictims
from coordinator.governance.choice import Choice, Detour, Trial, may_preempt_own, own_nodes
from coordinator.governance.placement import FreeGpus
from coordinator.governance.room import Room
from coordinator.governance.slot_events import Deviation, NodeNumbers, SlotEvents

ANY = 1 << 62
"""A rank, or priority, above every other: "no bound"."""


class EventRooms:
    """The slot event indexes of one round (one per candidate list and pod size) and the
    room steps that read them."""

    def __init__(self, slots: FreeGpus, healthy: Mapping[str, int]) -> None:
        self._slots = slots
        self._healthy = healthy
        self._events: dict[tuple[int, int], SlotEvents] = {}
        self._numbers: NodeNumbers | None = None
        self._indexed_upto: dict[tuple[int, int], int] = {}
        """How many ranks of its list each index has seen."""

    def nodes_changed(self, nodes: Iterable[str]) -> None:
        """Free GPUs, or live candidates, changed on those nodes. Told to every index, as
        a round has a few: one that does not hold a node passes over it when it next
        reads, which costs less than knowing, for each of thousands of nodes, which
        indexes hold it."""
        every = self._events.values()
        if len(every) == 1:
            (events,) = every
            events.refresh_all(nodes)
        elif every:
            changed = set(nodes)
            for events in every:
                events.refresh_all(changed)

    def reclaim(self, choice: Choice, trial: Trial, room: Room, borrowed: BorrowedVictims) -> None:
        """The pods fit first at the latest of the ranks where each size has its slots;
        the candidates that can survive the pruning are those up to there on nodes that
        gain slots (see :func:`needed_ranks`). A gang's one-GPU pods fit wherever GPUs
        are, as the counts already ensure (so their nodes are left out), unless GPUs not on
        a node count: then it walks."""
        assert trial.resume is not None
        deviations = self._deviations(trial, borrowed, None)
        trial.mixed = not room.size
        room.short_of_gpus_only = False
        reached: dict[int, tuple[int, set[str]]] = {}
        """Per pod size: the rank where its slots are enough, the nodes gaining them."""
        for size, count in room.needs:
            need = count - self._slots_without_victims(size, deviations)
            if need <= 0:
                continue
            index = self._index(-1, size, borrowed, None)
            found = index.first_events(need, borrowed.ranked(), deviations)
            if len(found) < need:
                if trial.mixed:
                    if may_preempt_own(trial.book):
                        raise Detour
                    return  # not even every borrowed task would make room
                trial.gaining, trial.events = {node for _, node in found}, len(found)
                trial.fell_short = True
                return  # the team's own tasks may still make room; the borrowed ones join then
            trial.last = max(trial.last, found[need - 1][0])
            if not (trial.mixed and size == 1):
                reached[size] = (found[need - 1][0], {node for _, node in found})
        trial.reached = reached
        needed = needed_ranks(borrowed, reached, trial.resume, deviations)
        trial.borrowed_ranks.update(needed)
        choice.take_all(map(borrowed.victim_at, needed), own=False)
        if not choice.fitted:
            if room.short_of_gpus_only:
                raise Detour
            raise AssertionError("slot events and the room disagree")

    def own_room(
        self,
        choice: Choice,
        trial: Trial,
        room: Room,
        own: OwnVictims,
        resume: int,
        base: int,
        borrowed: BorrowedVictims,
    ) -> None:
        """As :meth:`reclaim`, over the team's own tasks, on top of every borrowed one."""
        reclaim_deviations = self._deviations(trial, borrowed, None)
        deviations = self._deviations(trial, own, borrowed)
        without = self._slots_without_victims(room.size, reclaim_deviations)
        if trial.resume is None:
            # Step 1 took every borrowed task: how much room they bring, from their events.
            index = self._index(-1, room.size, borrowed, None)
            trial.events = len(index.first_events(room.count, ANY, reclaim_deviations))
        need = room.count - without - trial.events
        assert need > 0, "the pods fit without the team's own tasks"
        events = self._index(trial.book.index, room.size, own, borrowed)
        while True:
            limit = min(own.ranks_below(base), own.ranked())
            found = events.first_events(need, limit, deviations)
            if len(found) >= need:
                break
            if not own.build_next_level(base):
                self.add_borrowed_room(choice, trial, set(), borrowed)
                return
            events = self._index(trial.book.index, room.size, own, borrowed)
        gaining = {node for _, node in found}
        self.add_borrowed_room(choice, trial, gaining, borrowed)
        ranks = ranks_on(own, gaining, resume, found[need - 1][0], deviations)
        choice.take_all(map(own.victim_at, ranks), own=True)
        assert choice.fitted, "slot events and the room disagree"

    def add_borrowed_under_own(
        self, choice: Choice, trial: Trial, borrowed: BorrowedVictims
    ) -> None:
        """The borrowed tasks made room and the team's own tasks were taken after, for its
        guarantee: where those are, every borrowed candidate the room step would have
        walked past counts too (with them it may make room the pruning counts on)."""
        nodes = own_nodes(choice, trial.book)
        if not nodes or trial.reached is None or trial.resume is None:
            return
        deviations = self._deviations(trial, borrowed, None)
        needed = needed_ranks(borrowed, trial.reached, trial.resume, deviations, nodes, trial.last)
        for rank in needed:
            if rank not in trial.borrowed_ranks:
                trial.borrowed_ranks.add(rank)
                choice.take(borrowed.victim_at(rank), own=False)
                trial.late = True

    def add_borrowed_room(
        self, choice: Choice, trial: Trial, also: set[str], borrowed: BorrowedVictims
    ) -> None:
        """After a room step over the borrowed tasks that read slot events and fell short,
        the borrowed candidates the walk would have taken, as far as they can matter: those
        on nodes that gain room by them, or by them and the team's own victims (the others
        are pruned again, whatever else is taken)."""
        if not trial.fell_short or trial.resume is None:
            return
        nodes = trial.gaining | also | own_nodes(choice, trial.book)
        deviations = self._deviations(trial, borrowed, None)
        for rank in ranks_on(borrowed, nodes, trial.resume, ANY, deviations):
            choice.take(borrowed.victim_at(rank), own=False)
            trial.late = True

    # -- the indexes -----------------------------------------------------------------------------

    def _index(
        self, key: int, size: int, listing: CandidateList, under: BorrowedVictims | None
    ) -> SlotEvents:
        events = self._events.get((key, size))
        if events is None:
            extra = under.alive_on if under is not None else None
            if self._numbers is None:
                self._numbers = NodeNumbers(self._healthy)
            events = SlotEvents(size, listing, self._slots.by_node, self._numbers, extra)
            self._events[key, size] = events
            self._indexed_upto[key, size] = listing.ranked()
        elif self._indexed_upto[key, size] < listing.ranked():
            # a walk ordered more of a team's own tasks since
            self._index_more(listing, self._indexed_upto[key, size], events)
            self._indexed_upto[key, size] = listing.ranked()
        return events

    def _index_more(self, listing: CandidateList, start: int, events: SlotEvents) -> None:
        """Ranks from ``start`` were added to ``listing``: their nodes' events change."""
        nodes: set[str] = set()
        for task in listing.tasks[start:]:
            nodes.update(node for node, gpus in task.placement.items() if gpus > 0)
        events.refresh_all(nodes)

    def _deviations(
        self, trial: Trial, listing: CandidateList, under: BorrowedVictims | None
    ) -> dict[str, Deviation]:
        """Where this preemptor sees the nodes differently from the others: its own victims
        in flight add to them, and it may not take the task that preempted it."""
        healthy = self._healthy
        extra: dict[str, int] = {}
        for placement in trial.in_flight:
            for node, gpus in placement.items():
                if gpus > 0 and node in healthy:
                    extra[node] = extra.get(node, 0) + gpus
        excluded: dict[str, int] = {}
        preempted_by = trial.task.preempted_by
        if preempted_by is not None:
            rank = listing.rank_of(preempted_by)
            if rank is not None and not listing.dead[rank]:
                for node, gpus in listing.tasks[rank].placement.items():
                    if gpus > 0:
                        excluded[node] = rank
            if under is not None:
                rank = under.rank_of(preempted_by)
                if rank is not None and not under.dead[rank]:
                    for node, gpus in under.tasks[rank].placement.items():
                        if gpus > 0 and node in healthy:
                            extra[node] = extra.get(node, 0) - gpus
        return {
            node: Deviation(extra.get(node, 0), excluded.get(node, -1))
            for node in extra.keys() | excluded.keys()
        }

    def _slots_without_victims(self, size: int, deviations: Mapping[str, Deviation]) -> int:
        """Pods of ``size`` the free GPUs hold, with this preemptor's victims in flight."""
        slots = self._slots
        total = slots.slots_for(size)
        for node, deviation in deviations.items():
            free = slots.free_on(node)
            total += (free + deviation.extra) // size - free // size
        return total


def ranks_on(
    listing: CandidateList,
    nodes: Iterable[str],
    first: int,
    last: int,
    deviations: Mapping[str, Deviation],
) -> list[int]:
    """Live ranks from ``first`` to ``last`` with GPUs on any of ``nodes``, in order."""
    return sorted(_ranks_on(listing, nodes, first, last, deviations, _excluded(deviations)))


def _ranks_on(
    listing: CandidateList,
    nodes: Iterable[str],
    first: int,
    last: int,
    deviations: Mapping[str, Deviation],
    excluded_anywhere: set[int],
) -> set[int]:
    """As :func:`ranks_on`, in no order (``excluded_anywhere``: :func:`_excluded`)."""
    ranks: set[int] = set()
    dead, on_node = listing.dead, listing.on_node
    for node in nodes:
        excluded = deviations[node].excluded if node in deviations else -1
        for rank in on_node.get(node, ()):
            if rank > last:
                break  # a node's ranks are in order
            if rank >= first and not dead[rank] and rank != excluded:
                ranks.add(rank)
    return ranks - excluded_anywhere if excluded_anywhere else ranks


def _excluded(deviations: Mapping[str, Deviation]) -> set[int]:
    """The ranks the preemptor may not take (the task that preempted it), on any node."""
    return {deviation.excluded for deviation in deviations.values()}


def needed_ranks(
    listing: CandidateList,
    reached: Mapping[int, tuple[int, set[str]]],
    first: int,
    deviations: Mapping[str, Deviation],
    also: set[str] | None = None,
    also_last: int = -1,
) -> list[int]:
    """The candidates from rank ``first`` on that the pruning may keep, in order: for each
    pod size, those up to the rank where its slots are enough, on nodes that gain slots by
    then (``reached``). A candidate on no such node changes no slot count whenever the
    pruning looks at it, so it is dropped and changes nothing for the others.

    With several sizes, a candidate kept for a bigger size past the rank where a smaller
    size was reached may, on another node of its own, complete a smaller slot with
    candidates before that rank; those are added too, until nothing more is. ``also``:
    nodes where every candidate up to ``also_last`` counts (the team's own victims, taken
    after, are there).

    Each node is looked at once per size, as it joins that size's nodes: the candidates a
    node brings do not depend on when it joins, so looking at every node again until
    nothing changes (as the rule reads) finds no more."""
    tasks = listing.tasks
    excluded = _excluded(deviations)
    chosen: set[int] = set()
    unfollowed: list[int] = []
    """Chosen ranks whose nodes are yet to join the sizes reached before them."""

    def choose(ranks: set[int]) -> None:
        for rank in ranks - chosen:
            chosen.add(rank)
            unfollowed.append(rank)

    if also:
        choose(_ranks_on(listing, also, first, also_last, deviations, excluded))
    seen = {size: set(nodes) for size, (_, nodes) in reached.items()}
    for last, nodes in reached.values():
        choose(_ranks_on(listing, nodes, first, last, deviations, excluded))
    # Most chosen ranks are within every size's reach: their nodes add nothing.
    within_all = min((last for last, _ in reached.values()), default=ANY)
    while unfollowed:
        rank = unfollowed.pop()
        if rank <= within_all:
            continue
        on = [node for node, gpus in tasks[rank].placement.items() if gpus > 0]
        for size, (last, _) in reached.items():
            if rank <= last:
                continue
            joining = [node for node in on if node not in seen[size]]
            if joining:
                seen[size].update(joining)
                choose(_ranks_on(listing, joining, first, last, deviations, excluded))
    return sorted(chosen)
