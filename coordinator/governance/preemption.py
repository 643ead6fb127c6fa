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
same ones. A room step now walks a few candidates (room is usually near) and then, for pods
whose sizes divide each other, reads where the pods first fit from slot events and takes
only the candidates that can survive the pruning (:mod:`.room_events`). Other mixes of pod
sizes, and a preemptor whose step 1 used up a lender, walk as the rule reads. The pieces
of one search and the last steps are in :mod:`.choice`. Internal to the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from coordinator.governance.books import Book, Books
from coordinator.governance.candidates import BorrowedVictims, OwnVictims
from coordinator.governance.choice import (
    Choice,
    Detour,
    Trial,
    may_preempt_own,
    may_reclaim,
    pruned,
    reclaim_first,
    untake,
    used_up,
    within_lenders,
)
from coordinator.governance.placement import FreeGpus
from coordinator.governance.ranking import Priorities
from coordinator.governance.room import Room
from coordinator.governance.room_events import ANY, EventRooms
from coordinator.governance.tasks import Task
from coordinator.governance.victim_order import CandidateOrder, Levels, Victim

SHORT_WALK = 48
"""Candidates a room step looks at one by one before it reads slot events instead: room is
usually near, and then walking costs less than keeping events."""


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
        self._rooms = EventRooms(slots, healthy) if slots is not None and healthy else None
        self._with_own_on: dict[int, dict[str, int]] = {}
        self._failed_walks: dict[int, int] = {}
        self._failed: dict[tuple[int, bool, int, tuple[int, ...]], tuple[int, int]] = {}
        """Searches that failed, by the kind of task, with what it needed."""
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
        if self._rooms is not None:
            self._rooms.nodes_changed(nodes)

    def lender_moved(self, book: Book) -> None:
        """The team crossed its guarantee: its borrowed tasks are reclaimable, or not."""
        if book.beyond:
            self.lenders_grew()
        if self._borrowed is not None:
            self.nodes_changed(self._borrowed.lend(book, book.beyond))

    def take(self, victim: Victim) -> None:
        """The victim is preempted: out of every list, its GPUs out of its team's."""
        self.take_all([victim])

    def take_all(self, victims: Iterable[Victim]) -> None:
        """As :meth:`take` for each, in order, with the nodes whose room changed told once
        for them all (a preemptor's victims are mostly on the few nodes it makes room on,
        and each node told is read again in every slot event index that holds it)."""
        changed: set[str] = set()
        freed: dict[int, int] = {}
        books: dict[int, Book] = {}
        for victim in victims:
            self.taken.add(victim.key)
            # Its own list, by its rank; the other list it may be in (borrowed tasks are
            # also in their team's own list, if that was made), by its key.
            listed = self._borrowed if victim.listed < 0 else self._own[victim.listed]
            assert listed is not None
            changed.update(listed.kill(victim.rank))
            other = self._own.get(victim.book.index) if victim.listed < 0 else self._borrowed
            if other is not None:
                rank = other.rank_of(victim.key)
                if rank is not None:
                    changed.update(other.kill(rank))
            index = victim.book.index
            freed[index] = freed.get(index, 0) + victim.gpus
            books[index] = victim.book
        # Each team's GPUs out at once: usage only falls, so it crosses its guarantee at
        # most once, and the victims after that are dead already, as the team's others.
        for index, gpus in freed.items():
            if self._books.change_used(books[index], -gpus):
                self.lender_moved(books[index])
        self.nodes_changed(changed)

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
        ``in_flight``: where the preemptor's victims still leaving are. Asked only when
        :meth:`known_to_fail` is not."""
        alike = self._alike(task, book, in_flight)
        try:
            found = self._attempt(Trial(task, book, in_flight), need_free, need_quota, room)
        except Detour:
            if room is not None:
                room.restart()
            trial = Trial(task, book, in_flight, walk=True)
            found = self._attempt(trial, need_free, need_quota, room)
        if found is None and alike is not None:
            self._failed[alike] = (need_free, need_quota)
        return found

    def known_to_fail(
        self,
        task: Task,
        book: Book,
        need_free: int,
        need_quota: int,
        in_flight: Sequence[Mapping[str, int]] = (),
    ) -> bool:
        """A search for a task like this one that needed no more failed earlier in the
        round: this one fails too (asked before a room is built for it). A round only takes
        victims away and fills GPUs, and many tasks of a round are alike (the same team,
        gang shape and class)."""
        alike = self._alike(task, book, in_flight)
        failed = self._failed.get(alike) if alike is not None else None
        return failed is not None and need_free >= failed[0] and need_quota >= failed[1]

    def _alike(
        self, task: Task, book: Book, in_flight: Sequence[Mapping[str, int]]
    ) -> tuple[int, bool, int, tuple[int, ...]] | None:
        """What makes searches alike; None for a task that sees nodes of its own (victims
        in flight, a task it may not take)."""
        if in_flight or task.preempted_by is not None:
            return None
        own = may_preempt_own(book)
        return (book.index, own, self._priorities.base(task) if own else -1, task.pod_gpus)

    def lenders_grew(self) -> None:
        """A team borrows more than before in this round: more of its tasks may be
        reclaimed, so searches that failed may not fail again."""
        self._failed.clear()

    def _attempt(
        self, trial: Trial, need_free: int, need_quota: int, room: Room | None
    ) -> list[Victim] | None:
        # Whether the pods fit, read only once the counts are met: placing is the dearer test.
        choice = Choice(
            need_free, need_quota, room, fitted=room is None or (need_free <= 0 and room.fits())
        )
        book = trial.book
        self._reclaim_into(choice, trial)
        if may_preempt_own(book) and not choice.complete:
            self._own_into(choice, trial)
            if trial.reached is not None and self._rooms is not None:
                self._rooms.add_borrowed_under_own(choice, trial, self.borrowed())
        if not choice.complete:
            return None
        chosen = reclaim_first(choice.chosen, book) if trial.late else choice.chosen
        kept = pruned(chosen, book, choice.left_free, choice.left_quota, room)
        if trial.mixed and room is not None and room.short_of_gpus_only:
            # The pods' one-GPU slots were short: those can be anywhere, so the room step
            # left out candidates the rule counts on.
            raise Detour
        return kept if within_lenders(kept, book) else None

    def _reclaim_into(self, choice: Choice, trial: Trial) -> None:
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
            if may_reclaim(victim, book, preempted_by, choice.lowered):
                choice.take(victim, own=False)
            rank = next_alive(rank + 1)
        room = choice.room
        if trial.resume is None or room is None or choice.fitted:
            return
        events = not trial.walk and room.needs and not used_up(choice.lowered, self._books)
        # Room is usually near: a short walk finds it at less cost than reading events,
        # until short walks keep failing in this round.
        limit = self._walk_limit(-1) if events else None
        if limit != 0 and self._reclaim_room_by_walking(choice, trial, room, limit):
            trial.walked = True
            self._walked(-1, True)
        else:
            self._walked(-1, False)
            assert self._rooms is not None
            self._rooms.reclaim(choice, trial, room, self.borrowed())

    def _reclaim_room_by_walking(
        self, choice: Choice, trial: Trial, room: Room, limit: int | None
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
                untake(choice, taken, own=False)
                return False
            victim = borrowed.victim_at(rank)
            if room.may_help(victim.task.placement) and may_reclaim(
                victim, book, preempted_by, lowered
            ):
                choice.take(victim, own=False)
                taken.append(victim)
        return True

    def _own_into(self, choice: Choice, trial: Trial) -> None:
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
            if self._rooms is not None:
                self._rooms.add_borrowed_room(choice, trial, set(), self.borrowed())
            return
        events = not (trial.walk or trial.walked or not room.size) and not used_up(
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
        assert self._rooms is not None
        self._rooms.own_room(choice, trial, room, own, resume, base, self.borrowed())

    def _own_room_by_walking(
        self, choice: Choice, trial: Trial, resume: int, limit: int | None
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
                untake(choice, taken, own=True)
                return False
            if victim.key != preempted_by and room.may_help(victim.task.placement):
                choice.take(victim, own=True)
                taken.append(victim)
        return True

    def _walk_limit(self, listed: int) -> int:
        """How many candidates a room step over that list may walk before reading events:
        none once short walks failed there twice in a row."""
        return 0 if self._failed_walks.get(listed, 0) >= 2 else SHORT_WALK

    def _walked(self, listed: int, found: bool) -> None:
        self._failed_walks[listed] = 0 if found else self._failed_walks.get(listed, 0) + 1

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
