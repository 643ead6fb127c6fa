"""The governance engine: which waiting tasks to admit and which running tasks to preempt.

Pure: ``decide(state, policy, now)`` reads the tasks and the healthy capacity and returns
decisions; it changes nothing and does no I/O. Same input, same decisions (every ordering
ends on the task key, never on dict order).

One round, in three passes over the queue (task-ranking: effective priority, then arrival;
first-come-first-serve: arrival):

1. Guaranteed: a task whose team stays within its guarantee is admitted if the GPUs are
   free; if they are not, because other teams borrowed them, it preempts those borrowers
   (reclaim) and the GPUs it waits for are reserved for it.
2. Borrowing: a task beyond its team's guarantee may borrow idle GPUs (of lending teams, or
   not owned by any team) within the team's borrow limit, never the idle guarantee of a
   ``dont-lend`` team. Fair-share hands idle GPUs to the team with the least borrowed per
   fair-share weight; first-come-first-serve goes in queue order.
3. Priority: a task still waiting, of a team with ``preemptLowerPriority`` that is not
   beyond its own quota, may preempt its own team's lower-priority tasks, as far as needed
   for the team to end within its guarantee with it.

A task waiting on a preemption counts as its team's from the moment it preempts (and, in
later rounds, until it is admitted): the GPUs it waits for are the team's, so no later task
of the team counts on the same room in the guarantee and preempts again for it. The GPUs
its victims free are its own, first, once they are gone, until it is admitted. With
capacity per node, a set of victims must also leave room for the task's pods on the nodes;
no task is preempted for a gang that would still not fit.

A round chooses at most ``preemption.maxVictimsPerRound`` victims, give or take the last
preemptor's set; then it stops, and the next round goes on there (:mod:`.victim_budget`).

Pending tasks that do not fit are skipped and smaller ones behind them may go (best
effort), until the first task of a team's queue has waited past
``reservation.afterWaitSeconds``: then capacity is held for it (:mod:`.reservation`). A
task preempted often ages upward (see ``effective_priority``).

Cost: one round over 10,000 tasks must stay well under 50 ms on any layout and grow about
linearly with the cluster (bench/governance_decision.py): look-ups resolved once per round
(:mod:`.ranking`), candidates ordered a priority level at a time and dead ones skipped in
amortized constant time (:mod:`.candidates`), running totals (:mod:`.books`), bounds before
a search, room counted in pod-sized slots (:mod:`.room`) and read from per-node slot events
rather than walked (:mod:`.preemption`), shared waiting reasons, and no reference cycles.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

from coordinator.governance.books import Book, Books
from coordinator.governance.borrowing import borrow_refusal, fair_share_order
from coordinator.governance.borrowing import cannot_borrow as cannot_borrow_words
from coordinator.governance.choice import preempt_decisions
from coordinator.governance.decisions import Admit, Decisions, Preempt
from coordinator.governance.intake import read_tasks
from coordinator.governance.placement import FreeGpus
from coordinator.governance.policy import IdleComputeAllocation, Lending, Policy, VictimOrder
from coordinator.governance.preemption import VictimSearch
from coordinator.governance.ranking import Priorities, effective_priority, sort_queue
from coordinator.governance.reservation import (
    behind_words,
    held_words,
    hold_on_nodes,
    holders,
    kept_words,
)
from coordinator.governance.room import PodShape, Room
from coordinator.governance.tasks import GovernanceState, Task
from coordinator.governance.victim_budget import VictimBudgetSpent, stopped_words
from coordinator.governance.victim_order import CandidateOrder, Victim

__all__ = ["decide", "effective_priority"]


def decide(state: GovernanceState, policy: Policy, now: float) -> Decisions:
    """Admissions and preemptions for this moment. See the module docstring for the rules."""
    # A round makes no reference cycles (tests/test_governance_gc.py): reference counting
    # frees all it builds. The cyclic collector's passes during a round would only walk the
    # round's many live objects, at 4-8 % of its time; paused, they are not owed after.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Round(state, policy, now).run()
    finally:
        if enabled:
            gc.enable()


class _Round:
    """One call of :func:`decide`: the teams' accounts, the queue and what is decided."""

    def __init__(self, state: GovernanceState, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.priorities = Priorities(policy)
        self.admits: list[Admit] = []
        self.preempts: list[Preempt] = []
        self.reserved = 0
        self._pods: dict[tuple[int, ...], PodShape] = {}
        self.holders: dict[int, str] = {}
        """Per team, the task capacity is held for (see :mod:`.reservation`)."""
        self._behind_words: dict[int, str] = {}
        self.precommitted: dict[str, int] = {}
        """Waiting preemptors counted in their team's usage from the start of the round,
        with the free GPUs held for them until the guaranteed pass reaches them (see
        ``_precommit``)."""

        capacity = state.capacity
        healthy = (
            sum(capacity.by_node.values())
            if capacity.by_node is not None
            else capacity.healthy_gpus
        )
        self.books = Books(policy, healthy)
        taken_in = read_tasks(state, self.books, now)
        self.queue, self.demand, self.waiting = taken_in.queue, taken_in.demand, taken_in.waiting
        self.victim_budget = policy.preemption.max_victims_per_round
        self.stopped_at: str | None = None
        self.inflight, self.claimed = taken_in.inflight, taken_in.claimed
        self.leaving = taken_in.leaving
        self.slots: FreeGpus | None
        self.nodes = capacity.by_node
        if capacity.by_node is not None:
            free = {
                node: max(0, gpus - taken_in.used_on_node.get(node, 0))
                for node, gpus in capacity.by_node.items()
            }
            self.slots = FreeGpus(free)
            self.free = self.slots.total - taken_in.held_unplaced
        else:
            self.slots = None
            self.free = healthy - taken_in.held_total
        checkpoint_aware = policy.preemption.victim_order is VictimOrder.CHECKPOINT_AWARE
        self.search = VictimSearch(
            self.books,
            self.priorities,
            CandidateOrder(
                now, checkpoint_aware=checkpoint_aware, idle_first=policy.preemption.idle_first
            ),
            self.slots,
            self.nodes,
            set(),
        )

    def _change_used(self, book: Book, delta: int) -> None:
        if self.books.change_used(book, delta):
            self.search.lender_moved(book)
        elif delta > 0 and book.beyond:
            self.search.lenders_grew()

    def run(self) -> Decisions:
        if self.queue:
            sort_queue(self.queue, self.policy.admission, self.priorities)
            self.holders = holders(
                self.queue,
                self.books.of,
                self.policy.reservation.after_wait_seconds,
                self.now,
                self.inflight.keys() | self.claimed.keys(),
            )
            if self.inflight or self.claimed:
                self._precommit()
            try:
                beyond = self._guaranteed_pass()
                still_waiting = self._borrowing_pass(beyond)
                self._priority_pass(still_waiting)
            except VictimBudgetSpent as spent:
                self._stop_at(spent.task)
        return Decisions(tuple(self.admits), tuple(self.preempts), self.waiting, self.stopped_at)

    def _stop_at(self, task: Task) -> None:
        """The round chose its victims' worth before ``task`` looked for any: it and every
        task not decided yet wait for the next round."""
        self.stopped_at = task.key
        self.waiting[task.key], later = stopped_words(
            task.key, len(self.preempts), self.victim_budget
        )
        admitted = {admit.task for admit in self.admits}
        for queued in self.queue:
            if queued.key not in self.waiting and queued.key not in admitted:
                self.waiting[queued.key] = later

    def _precommit(self) -> None:
        """Gives each waiting preemptor what its earlier preemptions are for, before the
        guaranteed pass looks at any task: its demand counts in its team's usage, and of
        its victims' GPUs that are already free, as many as it needs are held for it. A
        task ahead of it in the queue then neither takes the same room in the guarantee
        (and preempts again for it) nor the freed GPUs (a victim aged to its preemptor's
        priority would otherwise take its own GPUs back, and the preemptor preempt anew).

        In queue order, and only while the team stays within its guarantee (a preemptor
        that no longer fits, after a fault or a policy change, waits as any other). The
        guaranteed pass gives both back when it reaches the task and decides it afresh."""
        inflight, claimed = self.inflight, self.claimed
        for task in self.queue:
            key = task.key
            if key not in inflight and key not in claimed:
                continue
            book = self.books.of[task.namespace]
            demand = self.demand[key]
            if book.used + demand > book.guarantee:
                continue
            self._change_used(book, demand)
            short = max(0, demand - inflight.get(key, 0))
            held = min(claimed.get(key, 0), short, max(0, self.free - self.reserved))
            self.reserved += held
            self.precommitted[key] = held

    # -- pass 1 ------------------------------------------------------------------------------

    def _guaranteed_pass(self) -> list[Task]:
        beyond: list[Task] = []
        book_of, demand_of = self.books.of, self.demand
        precommitted = self.precommitted
        # Why a task waits, by team and demand: the same words for the many tasks alike.
        unfree: dict[tuple[int, int], str] = {}
        holders = self.holders
        for task in self.queue:
            book = book_of[task.namespace]
            demand = demand_of[task.key]
            if precommitted and task.key in precommitted:
                self.reserved -= precommitted.pop(task.key)
                self._change_used(book, -demand)
            held = holders and holders.get(book.index) == task.key
            if book.held_for is not None:
                self.waiting[task.key] = self._behind(book)
            elif demand == 0:
                self._admit_placed(task, book, demand, borrowing=False)
            elif book.used + demand > book.guarantee:
                if held:
                    self._keep_guarantee_for(task, book, demand)
                beyond.append(task)
            elif demand <= self.free - self.reserved:
                # Enough GPUs are free, but maybe not on nodes that hold the pods:
                # preempting may make room where they would fit (if not, the reason stays).
                if (
                    not self._admit_placed(task, book, demand, borrowing=False)
                    and not self._preempt_for(task, book, demand)
                    and held
                ):
                    self._hold_for(task, book, demand)
            elif self._preempt_for(task, book, demand):
                pass
            elif held:
                self._hold_for(task, book, demand)
            else:
                reason = unfree.get((book.index, demand))
                if reason is None:
                    reason = unfree[book.index, demand] = (
                        f"within team {book.team.name}'s guarantee but {demand} GPUs are not "
                        f"free and nothing can be preempted for it"
                    )
                self.waiting[task.key] = reason
        return beyond

    # -- pass 2 ------------------------------------------------------------------------------

    def _borrowing_pass(self, beyond: list[Task]) -> list[Task]:
        """Admits borrowers it can; returns the tasks still waiting, in queue order."""
        reserved_idle = sum(
            book.idle for book in self.books.all if book.team.lending is Lending.DONT_LEND
        )
        borrowers: list[Task] = []
        # One reason per team that cannot borrow: nothing it holds changes in this loop.
        cannot_borrow: dict[int, str] = {}
        # (A team's tasks behind a task its guarantee is kept for are not among them: the
        # guaranteed pass stopped them.)
        for task in beyond:
            book = self.books.of[task.namespace]
            if book.may_borrow:
                borrowers.append(task)
                continue
            reason = cannot_borrow.get(book.index)
            if reason is None:
                reason = cannot_borrow[book.index] = cannot_borrow_words(book)
            self.waiting[task.key] = reason
        if self.policy.idle_compute is IdleComputeAllocation.FAIR_SHARE:
            order: Iterator[Task] = fair_share_order(borrowers, self.books.of, self.books.all)
        else:
            order = iter(borrowers)
        # Why a borrower waits depends on its team and demand, and on what is idle: the
        # same for the many tasks alike until an admission changes what teams hold.
        refusals: dict[tuple[int, int], str] = {}
        for task in order:
            book = self.books.of[task.namespace]
            demand = self.demand[task.key]
            refusal = refusals.get((book.index, demand))
            if refusal is None:
                idle = self.free - self.reserved - reserved_idle
                refusal = borrow_refusal(book, demand, idle)
                if refusal is None:
                    if self._admit_placed(task, book, demand, borrowing=True):
                        refusals.clear()
                    continue
                refusals[book.index, demand] = refusal
            if task.key != book.held_for:  # its own words say why it waits, and for what
                self.waiting[task.key] = refusal
        admitted = {admit.task for admit in self.admits}
        return [task for task in beyond if task.key not in admitted]

    # -- pass 3 ------------------------------------------------------------------------------

    def _priority_pass(self, waiting: list[Task]) -> None:
        for task in waiting:
            book = self.books.of[task.namespace]
            if not book.team.preempt_lower_priority or book.used > book.guarantee:
                continue  # a team beyond its own quota never preempts for priority
            demand = self.demand[task.key]
            if book.used + demand > book.guarantee:
                self._preempt_for(task, book, demand)

    # -- reservation -------------------------------------------------------------------------

    def _keep_guarantee_for(self, task: Task, book: Book, demand: int) -> None:
        """``task`` waited too long and its team's guarantee is short of it: the tasks
        behind it in the team's queue wait until it fits."""
        book.held_for = task.key
        self.waiting[task.key] = kept_words(task, book, demand, self.now)

    def _hold_for(self, task: Task, book: Book, demand: int) -> None:
        """``task`` waited too long, fits its team's guarantee but not the free GPUs: those
        of the nodes that will hold it soonest are held for it, and it counts as its
        team's, as a task waiting on a preemption does."""
        if self.slots is not None and self.nodes is not None:
            on_nodes = hold_on_nodes(self.slots, self.nodes, task.pod_gpus)
            self.search.nodes_changed(on_nodes)
            held = sum(on_nodes.values())
        else:
            held = max(0, min(self.free - self.reserved, demand))
        self.reserved += held
        self._change_used(book, demand)
        self.waiting[task.key] = held_words(task, held, demand, self.now)

    def _behind(self, book: Book) -> str:
        reason = self._behind_words.get(book.index)
        if reason is None:  # the same words for the many tasks behind it
            reason = self._behind_words[book.index] = behind_words(book)
        return reason

    # -- admission ---------------------------------------------------------------------------

    def _admit_placed(self, task: Task, book: Book, demand: int, *, borrowing: bool) -> bool:
        """Admit ``task`` if its pods can be placed (always, when capacity is a count)."""
        nodes: tuple[tuple[str, int], ...] | None = None
        if self.slots is not None:
            placed = self.slots.place(task.pod_gpus)
            if placed is None:
                self.waiting[task.key] = (
                    f"{demand} GPUs are free but no node placement fits the gang's pods "
                    f"{list(task.pod_gpus)}"
                )
                return False
            self.search.nodes_changed(placed)
            nodes = tuple(sorted(placed.items()))
        borrowed = max(0, book.used + demand - book.guarantee) - book.borrowed
        self._change_used(book, demand)
        self.free -= demand
        self.waiting.pop(task.key, None)
        if borrowing:
            reason = (
                f"admitted borrowing {borrowed} idle GPUs: team {book.team.name} holds "
                f"{book.used} GPUs, {book.borrowed} of them borrowed (limit {book.borrow_limit})"
            )
        else:
            reason = (
                f"admitted within team {book.team.name}'s guarantee: {book.used} of "
                f"{book.guarantee} GPUs"
            )
        self.admits.append(Admit(task.key, book.team.name, demand, borrowed, reason, nodes))
        return True

    # -- preemption --------------------------------------------------------------------------

    def _preempt_for(self, task: Task, book: Book, demand: int) -> bool:
        """Preempt what ``task`` needs, or see that it is already on its way. True when the
        task now waits on preemption: its demand counts as its team's from then on, and the
        free GPUs it counts on are reserved for it meanwhile."""
        inflight = self.inflight.get(task.key, 0)
        available = max(0, self.free - self.reserved)
        need_free = demand - available - inflight
        need_quota = book.used + demand - book.guarantee
        counts_met = need_free <= 0 and need_quota <= 0
        room = self._room_for(task) if counts_met else None
        if counts_met and (room is None or room.fits()):
            if inflight == 0:
                return False
            self.reserved += self._hold(room, demand - inflight, available)
            self._change_used(book, demand)
            self.waiting[task.key] = f"waiting for {inflight} GPUs being freed by preemption for it"
            return True
        # Most attempts that cannot succeed stop at these bounds: before a room is built.
        if not self.search.may_suffice(task, book, need_free, need_quota):
            return False
        if len(self.preempts) >= self.victim_budget:
            raise VictimBudgetSpent(task)
        leaving = self.leaving.get(task.key, ())
        if self.search.known_to_fail(task, book, need_free, need_quota, leaving):
            return False
        if room is None:
            room = self._room_for(task)
        victims = self.search.choose(task, book, need_free, need_quota, room, leaving)
        if victims is None:
            return False
        freed = sum(victim.gpus for victim in victims)
        self.reserved += self._hold(room, demand - inflight - freed, available)
        self._record_preemptions(task, book, victims)
        # The task now waits for its GPUs: they count as the team's from here on.
        self._change_used(book, demand)
        self.waiting[task.key] = f"preempting {len(victims)} task(s) to free {freed} GPUs for it"
        return True

    def _room_for(self, task: Task) -> Room | None:
        """A trial of the free GPUs per node, with those being freed for ``task`` already
        counted; None when capacity is a count (then only counts matter)."""
        if self.slots is None or self.nodes is None:
            return None
        pods = self._pods.get(task.pod_gpus)
        if pods is None:
            pods = self._pods[task.pod_gpus] = PodShape.of(task.pod_gpus)
        room = Room(self.slots, self.nodes, pods)
        for placement in self.leaving.get(task.key, ()):
            room.add_in_flight(placement)
        return room

    def _hold(self, room: Room | None, short: int, available: int) -> int:
        """Reserves the free GPUs a preemptor counts on besides those being freed for it,
        and returns how many. Per node, exactly those of a placement of its pods (so no
        later task of the round is placed on them); as a count, ``short`` of them, none
        when victims free more than it needs (that surplus is not free yet: reserving
        "less than nothing" would let others be admitted on GPUs still in use)."""
        if room is not None:
            held, nodes = room.hold()
            self.search.nodes_changed(nodes)
            return held
        return max(0, min(available, short))

    def _record_preemptions(self, task: Task, book: Book, victims: list[Victim]) -> None:
        self.search.take_all(victims)
        self.preempts.extend(
            preempt_decisions(task, book, victims, self.priorities.base(task), self.policy)
        )
