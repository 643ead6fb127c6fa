"""Which running tasks a waiting task preempts: the victim search.

The rule (docs/policy.md, "Preemption"), for a preemptor short of ``need_free`` GPUs, of
``need_quota`` GPUs of its team's guarantee and, with capacity per node, of room for its
pods:

1. Count: borrowed tasks of other teams in victim order, each while its team is still
   beyond its guarantee, until the GPUs are enough (reclaim).
2. Room: if the pods do not fit yet, the borrowed tasks after those, of teams still beyond
   their guarantee after step 1, in order, until the pods fit.
3. Only for a team with preemptLowerPriority within its guarantee, if that was not enough:
   the same two steps over its own tasks below the preemptor's class weight.
4. Pruning: the victims, latest first, whose GPUs are not needed after all are dropped; a
   set that would take a lending team below its guarantee (beyond the one task straddling
   it) is refused; no set, no preemption.

Step 2 is where the work was: in a full cluster room is scattered, and a preemptor walked
thousands of candidates before one node had enough; dozens of preemptors a round walked the
same ones. For pods of one size the walk is not needed: the pods first fit at the ``n``-th
slot event of :mod:`.slot_events`, and only candidates on nodes with an event up to there
can survive the pruning, so only those are taken. Gangs of mixed pod sizes, and a
preemptor whose step 1 used up a lender, walk as the rule reads. Internal to the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.governance.books import Book, Books
from coordinator.governance.candidates import (
    BorrowedVictims,
    CandidateList,
    CandidateOrder,
    Levels,
    OwnVictims,
    Victim,
)
from coordinator.governance.placement import FreeGpus
from coordinator.governance.ranking import Priorities
from coordinator.governance.room import Room
from coordinator.governance.slot_events import Deviation, SlotEvents
from coordinator.governance.tasks import Task

ANY = 1 << 62
"""A priority above every class weight and boost: "no bound"."""

SHORT_WALK = 48
"""Candidates a room step looks at one by one before it reads slot events instead: room is
usually near, and then walking costs less than keeping events."""


@dataclass(slots=True)
class Choice:
    """One preemptor's victims as the search takes them, and what is still missing."""

    left_free: int
    left_quota: int
    room: Room | None
    fitted: bool
    chosen: list[Victim] = field(default_factory=list)
    lowered: dict[int, int] = field(default_factory=dict)
    """GPUs taken so far from each lending team (by team index)."""

    @property
    def complete(self) -> bool:
        return self.left_free <= 0 and self.left_quota <= 0 and self.fitted

    def take(self, victim: Victim, *, own: bool) -> None:
        self.chosen.append(victim)
        self.left_free -= victim.gpus
        if own:
            self.left_quota -= victim.gpus
        else:
            self.lowered[victim.book.index] = self.lowered.get(victim.book.index, 0) + victim.gpus
        if self.room is not None:
            self.room.add(victim.task.placement)
            self.fitted = self.left_free <= 0 and self.room.fits()


class _Detour(Exception):
    """Reading slot events cannot give the rule's answer for this preemptor (a gang of
    several pod sizes short of GPUs alone, or of room only its own team's tasks can make):
    it walks instead."""


@dataclass(slots=True)
class _Trial:
    """What one preemptor's search carries from the reclaim steps to its own team's."""

    task: Task
    book: Book
    in_flight: Sequence[Mapping[str, int]]
    resume: int | None = None
    """Rank in the borrowed list where the room step began (None: it did not)."""
    walked: bool = False
    """The room step walked (instead of reading slot events)."""
    walk: bool = False
    """Walk every room step, as the rule reads."""
    gaining: set[str] = field(default_factory=set)
    """Nodes where the borrowed candidates alone bring room (when the room step failed)."""
    events: int = 0
    """How many slots they bring."""
    mixed: bool = False
    """A room step read slot events for pods of several sizes."""
    reached: Mapping[int, tuple[int, set[str]]] | None = None
    """When the borrowed tasks made room, read from slot events: per pod size, the rank
    where its slots were enough and the nodes gaining them."""
    last: int = -1
    """The rank where the pods fit."""
    borrowed_ranks: set[int] = field(default_factory=set)
    """The borrowed candidates the room step took."""
    fell_short: bool = False
    """The room step read slot events and the borrowed tasks could not make room."""
    late: bool = False
    """Borrowed victims were taken after the team's own: the victims are out of order."""


class VictimSearch:
    """The candidate lists of one round and the search over them."""

    def __init__(
        self,
        books: Books,
        priorities: Priorities,
        order: CandidateOrder,
        slots: FreeGpus | None,
        healthy: Mapping[str, int] | None,
        taken: set[str],
    ) -> None:
        self._books = books
        self._priorities = priorities
        self._order = order
        self._slots = slots
        self._healthy = healthy
        self.taken = taken
        self._borrowed: BorrowedVictims | None = None
        self._levels: dict[int, Levels] = {}
        self._own: dict[int, OwnVictims] = {}
        self._events: dict[tuple[int, int], SlotEvents] = {}
        self._indexed: dict[str, list[SlotEvents]] = {}
        """The slot event indexes that hold each node."""
        self._indexed_upto: dict[tuple[int, int], int] = {}
        """How many ranks of its list each index has seen."""
        self._with_own_on: dict[int, dict[str, int]] = {}
        self._failed_walks: dict[int, int] = {}
        """Short room walks that failed in a row, per list."""

    # -- the lists ------------------------------------------------------------------------------

    def borrowed(self) -> BorrowedVictims:
        """Every team's borrowed tasks in victim order, built on first use."""
        if self._borrowed is None:
            books = self._books.all
            self._borrowed = BorrowedVictims(
                books, self._order, [self.levels(book) for book in books], self.taken
            )
        return self._borrowed

    def levels(self, book: Book) -> Levels:
        levels = self._levels.get(book.index)
        if levels is None:
            levels = self._levels[book.index] = Levels(book.members, self._priorities)
        return levels

    def own(self, book: Book) -> OwnVictims:
        own = self._own.get(book.index)
        if own is None:
            own = OwnVictims(self.levels(book), book, self._order, self.taken)
            self._own[book.index] = own
        return own

    # -- changes --------------------------------------------------------------------------------

    def nodes_changed(self, nodes: Iterable[str]) -> None:
        """Free GPUs changed on those nodes (a placement, a hold)."""
        indexed = self._indexed
        for node in nodes:
            for events in indexed.get(node, ()):
                events.refresh(node)

    def lender_moved(self, book: Book) -> None:
        """The team crossed its guarantee: its borrowed tasks are reclaimable, or not."""
        if self._borrowed is not None:
            self.nodes_changed(self._borrowed.lend(book, book.beyond))

    def take(self, victim: Victim) -> None:
        """The victim is preempted: out of every list, its GPUs out of its team's."""
        self.taken.add(victim.key)
        # Its own list, by its rank; the other list it may be in (borrowed tasks are also
        # in their team's own list, if that was made), by its key.
        listed = self._borrowed if victim.listed < 0 else self._own[victim.listed]
        assert listed is not None
        changed = listed.kill(victim.rank)
        other = self._own.get(victim.book.index) if victim.listed < 0 else self._borrowed
        if other is not None:
            rank = other.rank_of(victim.key)
            if rank is not None:
                changed.extend(other.kill(rank))
        self.nodes_changed(changed)
        if self._books.change_used(victim.book, -victim.gpus):
            self.lender_moved(victim.book)

    # -- the search -----------------------------------------------------------------------------

    def may_suffice(self, task: Task, book: Book, need_free: int, need_quota: int) -> bool:
        """Upper bounds (taken tasks still count) that give up early on the many attempts
        that cannot succeed, before any victim is looked at; part of the rule, as
        :meth:`choose` finds no victims when they fail. At least one victim is needed: the
        caller asks only when what is free (or on its way) is not enough."""
        own_allowed = may_preempt_own(book)
        if need_quota > 0 and not own_allowed:
            return False
        own_bound = self.own(book).gpus_below(self._priorities.base(task)) if own_allowed else 0
        reclaim_bound = self._books.borrowed_total - book.borrowed
        return not (
            need_quota > own_bound
            or need_free > reclaim_bound + own_bound
            or reclaim_bound + own_bound <= 0
        )

    def choose(
        self,
        task: Task,
        book: Book,
        need_free: int,
        need_quota: int,
        room: Room | None,
        in_flight: Sequence[Mapping[str, int]] = (),
    ) -> list[Victim] | None:
        """The victims by the rule above; None when no set of them is enough. ``room``,
        when given, holds the chosen victims' GPUs as leaving when this returns;
        ``in_flight``: where the preemptor's victims still leaving are."""
        try:
            return self._attempt(_Trial(task, book, in_flight), need_free, need_quota, room)
        except _Detour:
            if room is not None:
                room.restart()
            trial = _Trial(task, book, in_flight, walk=True)
            return self._attempt(trial, need_free, need_quota, room)

    def _attempt(
        self, trial: _Trial, need_free: int, need_quota: int, room: Room | None
    ) -> list[Victim] | None:
        # Whether the pods fit, read only once the counts are met: placing is the dearer test.
        choice = Choice(
            need_free, need_quota, room, fitted=room is None or (need_free <= 0 and room.fits())
        )
        book = trial.book
        self._reclaim_into(choice, trial)
        if may_preempt_own(book) and not choice.complete:
            self._own_into(choice, trial)
            if trial.reached is not None:
                self._add_borrowed_under_own(choice, trial)
        if not choice.complete:
            return None
        chosen = _reclaim_first(choice.chosen, book) if trial.late else choice.chosen
        kept = pruned(chosen, book, choice.left_free, choice.left_quota, room)
        if trial.mixed and room is not None and room.short_of_gpus_only:
            # The pods' one-GPU slots were short: those can be anywhere, so the room step
            # left out candidates the rule counts on.
            raise _Detour
        return kept if _within_lenders(kept, book) else None

    def _reclaim_into(self, choice: Choice, trial: _Trial) -> None:
        borrowed, book = self.borrowed(), trial.book
        preempted_by = trial.task.preempted_by
        # Every preemptor of the round starts here: a plain loop over the live ranks.
        next_alive, victim_at, end = borrowed.next_alive, borrowed.victim_at, borrowed.ranked()
        rank = next_alive(0)
        while rank < end:
            if choice.left_free <= 0:
                trial.resume = rank
                break
            victim = victim_at(rank)
            if _may_reclaim(victim, book, preempted_by, choice.lowered):
                choice.take(victim, own=False)
            rank = next_alive(rank + 1)
        room = choice.room
        if trial.resume is None or room is None or choice.fitted:
            return
        events = not trial.walk and room.needs and not _used_up(choice.lowered, self._books)
        # Room is usually near: a short walk finds it at less cost than reading events,
        # until short walks keep failing in this round.
        limit = self._walk_limit(-1) if events else None
        if limit != 0 and self._reclaim_room_by_walking(choice, trial, room, limit):
            trial.walked = True
            self._walked(-1, True)
        else:
            self._walked(-1, False)
            self._reclaim_room_from_events(choice, trial, room)

    def _reclaim_room_by_walking(
        self, choice: Choice, trial: _Trial, room: Room, limit: int | None
    ) -> bool:
        """The room step as the rule reads; False (and nothing taken) when more than
        ``limit`` candidates would be looked at."""
        borrowed, book = self.borrowed(), trial.book
        room.rule_out(self._could_free_on(book))
        preempted_by = trial.task.preempted_by
        lowered = dict(choice.lowered)  # who is beyond its guarantee is settled by step 1
        assert trial.resume is not None
        taken: list[Victim] = []
        for looked, rank in enumerate(borrowed.walk(trial.resume, ANY)):
            if choice.fitted:
                break
            if limit is not None and looked >= limit:
                _untake(choice, taken, own=False)
                return False
            victim = borrowed.victim_at(rank)
            if room.may_help(victim.task.placement) and _may_reclaim(
                victim, book, preempted_by, lowered
            ):
                choice.take(victim, own=False)
                taken.append(victim)
        return True

    def _reclaim_room_from_events(self, choice: Choice, trial: _Trial, room: Room) -> None:
        """The pods fit first at the latest of the ranks where each size has its slots;
        the candidates that can survive the pruning are those up to there on nodes that
        gain slots (see :func:`_needed_ranks`). A gang's one-GPU pods fit wherever GPUs
        are, as the counts already ensure (so their nodes are left out), unless GPUs not on
        a node count: then it walks."""
        borrowed = self.borrowed()
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
                        raise _Detour
                    return  # not even every borrowed task would make room
                trial.gaining, trial.events = {node for _, node in found}, len(found)
                trial.fell_short = True
                return  # the team's own tasks may still make room; the borrowed ones join then
            trial.last = max(trial.last, found[need - 1][0])
            if not (trial.mixed and size == 1):
                reached[size] = (found[need - 1][0], {node for _, node in found})
        trial.reached = reached
        for rank in _needed_ranks(borrowed, reached, trial.resume, deviations):
            trial.borrowed_ranks.add(rank)
            choice.take(borrowed.victim_at(rank), own=False)
        if not choice.fitted:
            if room.short_of_gpus_only:
                raise _Detour
            raise AssertionError("slot events and the room disagree")

    def _own_into(self, choice: Choice, trial: _Trial) -> None:
        book = trial.book
        own = self.own(book)
        base = self._priorities.base(trial.task)
        preempted_by = trial.task.preempted_by
        resume: int | None = None
        for rank in own.walk(0, base):
            victim = own.victim_at(rank)
            if choice.left_free <= 0 and choice.left_quota <= 0:
                resume = rank
                break
            if victim.effective >= base:
                return  # never an equal-or-higher priority task for priority reasons
            if victim.key != preempted_by:
                choice.take(victim, own=True)
        room = choice.room
        if resume is None or room is None or choice.fitted:
            self._add_borrowed_room(choice, trial, set())
            return
        events = not (trial.walk or trial.walked or not room.size) and not _used_up(
            choice.lowered, self._books
        )
        # After borrowed tasks read from events fell short, those are not taken yet: a walk
        # would not see their room.
        limit = self._walk_limit(book.index) if events else None
        if (
            not trial.fell_short
            and limit != 0
            and self._own_room_by_walking(choice, trial, resume, limit)
        ):
            self._walked(book.index, True)
            return
        self._walked(book.index, False)
        self._own_room_from_events(choice, trial, room, own, resume, base)

    def _own_room_by_walking(
        self, choice: Choice, trial: _Trial, resume: int, limit: int | None
    ) -> bool:
        """As :meth:`_reclaim_room_by_walking`, over the team's own tasks."""
        book, room = trial.book, choice.room
        assert room is not None
        own = self.own(book)
        base = self._priorities.base(trial.task)
        preempted_by = trial.task.preempted_by
        room.rule_out(self._could_free_on(book))
        taken: list[Victim] = []
        for looked, rank in enumerate(own.walk(resume, base)):
            victim = own.victim_at(rank)
            if choice.fitted or victim.effective >= base:
                break
            if limit is not None and looked >= limit:
                _untake(choice, taken, own=True)
                return False
            if victim.key != preempted_by and room.may_help(victim.task.placement):
                choice.take(victim, own=True)
                taken.append(victim)
        return True

    def _own_room_from_events(
        self, choice: Choice, trial: _Trial, room: Room, own: OwnVictims, resume: int, base: int
    ) -> None:
        borrowed = self.borrowed()
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
                self._add_borrowed_room(choice, trial, set())
                return
            events = self._index(trial.book.index, room.size, own, borrowed)
        gaining = {node for _, node in found}
        self._add_borrowed_room(choice, trial, gaining)
        for rank in _ranks_on(own, gaining, resume, found[need - 1][0], deviations):
            choice.take(own.victim_at(rank), own=True)
        assert choice.fitted, "slot events and the room disagree"

    def _add_borrowed_under_own(self, choice: Choice, trial: _Trial) -> None:
        """The borrowed tasks made room and the team's own tasks were taken after, for its
        guarantee: where those are, every borrowed candidate the room step would have
        walked past counts too (with them it may make room the pruning counts on)."""
        nodes = _own_nodes(choice, trial.book)
        if not nodes or trial.reached is None or trial.resume is None:
            return
        borrowed = self.borrowed()
        deviations = self._deviations(trial, borrowed, None)
        needed = _needed_ranks(borrowed, trial.reached, trial.resume, deviations, nodes, trial.last)
        for rank in needed:
            if rank not in trial.borrowed_ranks:
                trial.borrowed_ranks.add(rank)
                choice.take(borrowed.victim_at(rank), own=False)
                trial.late = True

    def _add_borrowed_room(self, choice: Choice, trial: _Trial, also: set[str]) -> None:
        """After a room step over the borrowed tasks that read slot events and fell short,
        the borrowed candidates the walk would have taken, as far as they can matter: those
        on nodes that gain room by them, or by them and the team's own victims (the others
        are pruned again, whatever else is taken)."""
        if not trial.fell_short or trial.resume is None:
            return
        nodes = trial.gaining | also | _own_nodes(choice, trial.book)
        borrowed = self.borrowed()
        deviations = self._deviations(trial, borrowed, None)
        for rank in _ranks_on(borrowed, nodes, trial.resume, ANY, deviations):
            choice.take(borrowed.victim_at(rank), own=False)
            trial.late = True

    def _walk_limit(self, listed: int) -> int:
        """How many candidates a room step over that list may walk before reading events:
        none once short walks failed there twice in a row."""
        return 0 if self._failed_walks.get(listed, 0) >= 2 else SHORT_WALK

    def _walked(self, listed: int, found: bool) -> None:
        self._failed_walks[listed] = 0 if found else self._failed_walks.get(listed, 0) + 1

    # -- slot events ----------------------------------------------------------------------------

    def _index(
        self, key: int, size: int, listing: CandidateList, under: BorrowedVictims | None
    ) -> SlotEvents:
        events = self._events.get((key, size))
        if events is None:
            assert self._slots is not None and self._healthy is not None
            extra = under.alive_on if under is not None else None
            events = SlotEvents(size, listing, self._slots.by_node, self._healthy, extra)
            self._events[key, size] = events
            for node in listing.on_node:
                self._indexed.setdefault(node, []).append(events)
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
        for node in sorted(nodes):
            holders = self._indexed.setdefault(node, [])
            if events not in holders:
                holders.append(events)
            events.refresh(node)

    def _deviations(
        self, trial: _Trial, listing: CandidateList, under: BorrowedVictims | None
    ) -> dict[str, Deviation]:
        """Where this preemptor sees the nodes differently from the others: its own victims
        in flight add to them, and it may not take the task that preempted it."""
        healthy = self._healthy or {}
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
        assert self._slots is not None
        slots = self._slots
        total = slots.slots_for(size)
        for node, deviation in deviations.items():
            free = slots.free_on(node)
            total += (free + deviation.extra) // size - free // size
        return total

    def _could_free_on(self, book: Book) -> Mapping[str, int]:
        """GPUs per node of every task that could be a victim for a task of ``book``: the
        live borrowed tasks, and the team's own when it may preempt them. More than the
        real candidates (higher priorities), which is safe: it only rules out nodes that
        stay short even so."""
        borrowed = self.borrowed()
        if not may_preempt_own(book):
            return borrowed.alive_on
        with_own = self._with_own_on.get(book.index)
        if with_own is None:
            with_own = dict(borrowed.alive_on)
            for member in book.members:
                for node, gpus in member.placement.items():
                    with_own[node] = with_own.get(node, 0) + gpus
            self._with_own_on[book.index] = with_own
        return with_own


def may_preempt_own(book: Book) -> bool:
    return book.team.preempt_lower_priority and book.used <= book.guarantee


def _may_reclaim(
    victim: Victim, book: Book, preempted_by: str | None, lowered: dict[int, int]
) -> bool:
    lender = victim.book
    if lender is book:
        return False
    if victim.key == preempted_by:
        return False  # the task that preempted this one, still running: no ping-pong
    # That team back within its guarantee (with what this choice takes from it already):
    # nothing more to reclaim from it.
    return lender.used - lowered.get(lender.index, 0) > lender.guarantee


def _used_up(lowered: Mapping[int, int], books: Books) -> bool:
    """Step 1 brought some lender back within its guarantee: its later tasks are out of
    this preemptor's reach, which no slot index knows."""
    return any(
        books.all[index].used - gpus <= books.all[index].guarantee
        for index, gpus in lowered.items()
    )


def _ranks_on(
    listing: CandidateList,
    nodes: Iterable[str],
    first: int,
    last: int,
    deviations: Mapping[str, Deviation],
) -> list[int]:
    """Live ranks from ``first`` to ``last`` with GPUs on any of ``nodes``, in order."""
    ranks: set[int] = set()
    dead = listing.dead
    for node in nodes:
        excluded = deviations[node].excluded if node in deviations else -1
        for rank in listing.on_node.get(node, ()):
            if first <= rank <= last and not dead[rank] and rank != excluded:
                ranks.add(rank)
    excluded_anywhere = {deviation.excluded for deviation in deviations.values()}
    return sorted(rank for rank in ranks if rank not in excluded_anywhere)


def _needed_ranks(
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
    after, are there)."""
    tasks = listing.tasks
    chosen = set(_ranks_on(listing, also, first, also_last, deviations)) if also else set()
    nodes_by_size = {size: set(nodes) for size, (_, nodes) in reached.items()}
    while True:
        added = False
        for size, (last, _) in reached.items():
            nodes = nodes_by_size[size]
            for rank in list(chosen):
                if rank > last:
                    nodes.update(node for node, gpus in tasks[rank].placement.items() if gpus > 0)
            for rank in _ranks_on(listing, nodes, first, last, deviations):
                if rank not in chosen:
                    chosen.add(rank)
                    added = True
        if not added:
            return sorted(chosen)


def _untake(choice: Choice, taken: list[Victim], *, own: bool) -> None:
    """Gives back the victims a walk took, latest first (the choice was not fitted)."""
    for victim in reversed(taken):
        choice.chosen.pop()
        choice.left_free += victim.gpus
        if own:
            choice.left_quota += victim.gpus
        else:
            choice.lowered[victim.book.index] -= victim.gpus
        if choice.room is not None:
            choice.room.remove(victim.task.placement)
    choice.fitted = False


def _own_nodes(choice: Choice, book: Book) -> set[str]:
    """Nodes of the team's own victims chosen so far."""
    return {
        node
        for victim in choice.chosen
        if victim.book is book
        for node, gpus in victim.task.placement.items()
        if gpus > 0
    }


def _reclaim_first(chosen: list[Victim], book: Book) -> list[Victim]:
    """Victims in the order the rule takes them: borrowed ones (by rank), then the team's
    own (by rank); the borrowed ones a room step adds late belong with the first."""
    borrowed = [victim for victim in chosen if victim.book is not book]
    own = [victim for victim in chosen if victim.book is book]
    borrowed.sort(key=_rank)
    own.sort(key=_rank)
    return borrowed + own


def _rank(victim: Victim) -> int:
    return victim.rank


def pruned(
    chosen: list[Victim], book: Book, left_free: int, left_quota: int, room: Room | None
) -> list[Victim]:
    """``chosen`` less the victims, latest first, whose GPUs are not needed after all
    (``left_free`` and ``left_quota`` are at or below zero: what the set frees beyond need;
    ``room``, when given, must still fit the pods without them)."""
    kept: list[Victim] = []
    for victim in reversed(chosen):
        gpus = victim.gpus
        own = victim.book is book
        if (
            left_free + gpus <= 0
            and (not own or left_quota + gpus <= 0)
            and (room is None or room.fits_without(victim.task.placement))
        ):
            left_free += gpus
            if own:
                left_quota += gpus
        else:
            kept.append(victim)
    kept.reverse()
    return kept


def _within_lenders(victims: list[Victim], book: Book) -> bool:
    """Each lending team stays beyond its guarantee for all but the last of its victims
    (in victim order, which ``victims`` keeps)."""
    taken: dict[int, int] = {}
    last: dict[int, int] = {}
    lenders: dict[int, Book] = {}
    for victim in victims:
        if victim.book is book:
            continue  # the team's own tasks: priority, not reclaim
        index = victim.book.index
        taken[index] = taken.get(index, 0) + victim.gpus
        last[index] = victim.gpus
        lenders[index] = victim.book
    return all(taken[index] - last[index] < lenders[index].borrowed for index in taken)
