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
its victims free are its own, first, once they are gone. With capacity per node, a set of
victims must also leave room for the task's pods on the nodes; no task is preempted for
a gang that would still not fit.

Pending tasks that do not fit are skipped and smaller ones behind them may go (best effort,
as Kueue's BestEffortFIFO); a task preempted often ages upward (see ``effective_priority``).

Cost: one round over 10,000 tasks must stay well under 50 ms on any layout, and grow about
linearly with the cluster (bench/governance_decision.py). What keeps it there: policy
look-ups resolved once per round (:mod:`.ranking`); preemption candidates ordered one
priority level at a time, only as far as preemptors reach, and dead ones skipped in
amortized constant time (:mod:`.candidates`); running totals instead of rescans
(:mod:`.books`); cheap bounds before a preemptor's room is built; room on nodes counted in
pod-sized slots instead of placing pods (:mod:`.room`) and, once only room is missing, read
from per-node slot events instead of walking candidates (:mod:`.slot_events`,
:mod:`.preemption`); waiting reasons shared by the many tasks they fit alike. And few
objects that live through the round and no reference cycles, so the garbage collector
runs seldom and a round's objects are freed as it ends.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Mapping

from coordinator.governance.books import Book, Books
from coordinator.governance.candidates import CandidateOrder, Victim
from coordinator.governance.decisions import Admit, Decisions, Preempt, PreemptCause
from coordinator.governance.fairshare import fair_share_key
from coordinator.governance.placement import FreeGpus
from coordinator.governance.policy import (
    IdleComputeAllocation,
    Lending,
    Policy,
    VictimOrder,
)
from coordinator.governance.preemption import VictimSearch
from coordinator.governance.ranking import Priorities, effective_priority, sort_queue
from coordinator.governance.reservation import hold_on_nodes, holders
from coordinator.governance.room import PodShape, Room
from coordinator.governance.tasks import GovernanceState, RequeueCause, Task, TaskState

__all__ = ["decide", "effective_priority"]

# Set membership instead of the TaskState properties: the round tests every task's state.
_HOLDING = frozenset(state for state in TaskState if state.holding)
_WAITING = frozenset(state for state in TaskState if state.waiting)


def decide(state: GovernanceState, policy: Policy, now: float) -> Decisions:
    """Admissions and preemptions for this moment. See the module docstring for the rules."""
    return _Round(state, policy, now).run()


class _Round:
    """One call of :func:`decide`: the teams' accounts, the queue and what is decided."""

    def __init__(self, state: GovernanceState, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.priorities = Priorities(policy)
        self.admits: list[Admit] = []
        self.preempts: list[Preempt] = []
        self.waiting: dict[str, str] = {}
        self.reserved = 0
        self._pods: dict[tuple[int, ...], PodShape] = {}
        self.holders: dict[int, str] = {}
        """Per team, the task capacity is held for (see :mod:`.reservation`)."""
        self.position: dict[str, int] = {}
        """Place in the queue of every task, when some task is held capacity for."""
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
        self.inflight: dict[str, int] = {}
        """GPUs being freed for each preemptor: its victims, preempted, not yet gone."""
        self.claimed: dict[str, int] = {}
        """GPUs freed for each preemptor since: its victims are gone and back in the queue,
        and their GPUs are the preemptor's (DESIGN.md) for as long as it waits."""
        self.leaving: dict[str, list[Mapping[str, int]]] = {}
        """Where the GPUs being freed for each preemptor are (capacity per node only)."""
        self.queue: list[Task] = []
        self.demand: dict[str, int] = {}
        """GPUs of each task in the queue (its pods added up once: every pass reads them)."""
        held_unplaced = 0
        held_total = 0
        used_on_node: dict[str, int] = {}
        per_node = capacity.by_node is not None
        book_of, inflight = self.books.of, self.inflight  # locals: this loop sees every task
        for task in state.tasks.values():
            task_state = task.state
            if task_state in _HOLDING:
                gpus = task.gpus
                held_total += gpus
                if not task.placement:
                    held_unplaced += gpus
                elif per_node:
                    for node, count in task.placement.items():
                        used_on_node[node] = used_on_node.get(node, 0) + count
                if task_state is TaskState.PREEMPTED:
                    preemptor = task.preempted_by
                    if preemptor is not None:
                        inflight[preemptor] = inflight.get(preemptor, 0) + gpus
                        if per_node and task.placement:
                            self.leaving.setdefault(preemptor, []).append(task.placement)
                else:
                    book = book_of.get(task.namespace)
                    if book is not None:
                        book.used += gpus
                        book.members.append(task)
            elif task_state in _WAITING:
                self._enqueue(task)
                preemptor = task.preempted_by
                if (
                    preemptor is not None
                    and task.requeue_cause is RequeueCause.PREEMPTION
                    and not task.claim_spent
                ):
                    self.claimed[preemptor] = self.claimed.get(preemptor, 0) + task.gpus
        self.books.count_borrowed()

        self.slots: FreeGpus | None
        self.nodes = capacity.by_node
        if capacity.by_node is not None:
            free = {
                node: max(0, gpus - used_on_node.get(node, 0))
                for node, gpus in capacity.by_node.items()
            }
            self.slots = FreeGpus(free)
            self.free = self.slots.total - held_unplaced
        else:
            self.slots = None
            self.free = healthy - held_total
        checkpoint_aware = policy.preemption.victim_order is VictimOrder.CHECKPOINT_AWARE
        self.search = VictimSearch(
            self.books,
            self.priorities,
            CandidateOrder(now, checkpoint_aware=checkpoint_aware),
            self.slots,
            self.nodes,
            set(),
        )

    def _enqueue(self, task: Task) -> None:
        book = self.books.of.get(task.namespace)
        if book is None:
            self.waiting[task.key] = f"namespace {task.namespace} belongs to no team in the policy"
        elif not task.complete:
            self.waiting[task.key] = (
                f"waiting for all {task.size} pods of the gang ({len(task.pod_gpus)} known)"
            )
        elif task.backoff_until is not None and task.backoff_until > self.now:
            self.waiting[task.key] = f"backing off after a requeue until {task.backoff_until:.0f}"
        else:
            self.queue.append(task)
            self.demand[task.key] = task.gpus

    def _change_used(self, book: Book, delta: int) -> None:
        if self.books.change_used(book, delta):
            self.search.lender_moved(book)

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
            if self.holders:
                self.position = {task.key: index for index, task in enumerate(self.queue)}
            if self.inflight or self.claimed:
                self._precommit()
            beyond = self._guaranteed_pass()
            still_waiting = self._borrowing_pass(beyond)
            self._priority_pass(still_waiting)
        return Decisions(tuple(self.admits), tuple(self.preempts), self.waiting)

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
        for task in beyond:
            book = self.books.of[task.namespace]
            held_for = book.held_for
            if (
                held_for not in (None, task.key)
                and self.position[task.key] > self.position[held_for]
            ):
                self.waiting[task.key] = self._behind(book)
                continue
            if book.may_borrow:
                borrowers.append(task)
                continue
            reason = cannot_borrow.get(book.index)
            if reason is None:
                reason = cannot_borrow[book.index] = self._cannot_borrow(book)
            self.waiting[task.key] = reason
        if self.policy.idle_compute is IdleComputeAllocation.FAIR_SHARE:
            order: Iterator[Task] = self._fair_share_order(borrowers)
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
                refusal = self._borrow_refusal(book, demand, reserved_idle)
                if refusal is None:
                    if self._admit_placed(task, book, demand, borrowing=True):
                        refusals.clear()
                    continue
                refusals[book.index, demand] = refusal
            if task.key != book.held_for:  # its own words say why it waits, and for what
                self.waiting[task.key] = refusal
        admitted = {admit.task for admit in self.admits}
        return [task for task in beyond if task.key not in admitted]

    @staticmethod
    def _cannot_borrow(book: Book) -> str:
        why = (
            f"lending: {book.team.lending}"
            if not book.team.lending.borrows
            else "its borrow limit is 0 GPUs"
        )
        return (
            f"team {book.team.name} holds {book.used} of its {book.guarantee} guaranteed "
            f"GPUs and cannot borrow ({why})"
        )

    def _fair_share_order(self, borrowers: list[Task]) -> Iterator[Task]:
        """Borrowers in fair-share order: next, the team with the least borrowed per weight.
        The key is read again after each task, as an admission moves the team back."""
        queues: dict[int, deque[Task]] = {}
        for task in borrowers:
            queues.setdefault(self.books.of[task.namespace].index, deque()).append(task)
        heap = [self._share_key(index) for index in queues]
        heapq.heapify(heap)
        while heap:
            index = heapq.heappop(heap)[2]
            pending = queues[index]
            book = self.books.all[index]
            while pending:
                used = book.used
                yield pending.popleft()
                # Only this team's admission changes its key (no other team admits meanwhile,
                # and keys are unique by team index): while nothing was admitted the team is
                # still the least served, so it goes on without a trip through the heap.
                if pending and book.used != used:
                    heapq.heappush(heap, self._share_key(index))
                    break

    def _share_key(self, index: int) -> tuple[int, float, int]:
        book = self.books.all[index]
        return fair_share_key(book.borrowed, book.team.fair_share_weight, index)

    def _borrow_refusal(self, book: Book, demand: int, reserved_idle: int) -> str | None:
        """Why a task of ``book`` cannot borrow ``demand`` GPUs now; None when it may."""
        borrowed_after = book.used + demand - book.guarantee
        if borrowed_after > book.borrow_limit:
            return (
                f"would borrow {borrowed_after} GPUs, over team {book.team.name}'s borrow "
                f"limit of {book.borrow_limit}"
            )
        idle = self.free - self.reserved - reserved_idle
        if demand > idle:
            return (
                f"team {book.team.name} is at its guarantee ({book.guarantee} GPUs) and only "
                f"{max(0, idle)} idle GPUs can be borrowed, {demand} needed"
            )
        return None

    # -- pass 3 ------------------------------------------------------------------------------

    def _priority_pass(self, waiting: list[Task]) -> None:
        for task in waiting:
            book = self.books.of[task.namespace]
            if not book.team.preempt_lower_priority or book.used > book.guarantee:
                continue  # a team beyond its own quota never preempts for priority
            held_for = book.held_for
            if held_for is not None and self.position[task.key] > self.position[held_for]:
                continue  # the team's room is kept for the task it waits behind
            demand = self.demand[task.key]
            if book.used + demand > book.guarantee:
                self._preempt_for(task, book, demand)

    # -- reservation -------------------------------------------------------------------------

    def _keep_guarantee_for(self, task: Task, book: Book, demand: int) -> None:
        """``task`` waited too long and its team's guarantee is short of it: the tasks
        behind it in the team's queue wait until it fits."""
        book.held_for = task.key
        self.waiting[task.key] = (
            f"waited {self._waited(task)} past reservation.afterWaitSeconds: team "
            f"{book.team.name}'s guarantee is kept for it ({book.used} of {book.guarantee} "
            f"GPUs held, {demand} needed)"
        )

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
        self.waiting[task.key] = (
            f"waited {self._waited(task)} past reservation.afterWaitSeconds: {held} GPUs "
            f"held for it as they free up ({demand} needed)"
        )

    def _behind(self, book: Book) -> str:
        reason = self._behind_words.get(book.index)
        if reason is None:  # the same words for the many tasks behind it
            reason = self._behind_words[book.index] = (
                f"behind {book.held_for} in team {book.team.name}'s queue, which waited past "
                f"reservation.afterWaitSeconds: the team's guarantee is kept for it"
            )
        return reason

    def _waited(self, task: Task) -> str:
        return f"{(self.now - task.queued_at) / 3600:.1f} h"

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
        if room is None:
            room = self._room_for(task)
        victims = self.search.choose(
            task, book, need_free, need_quota, room, self.leaving.get(task.key, ())
        )
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
        base = self.priorities.base(task)
        grace_for = self.policy.preemption.grace_for
        for victim in victims:
            target = victim.task
            self.search.take(victim)
            own = victim.book is book
            cause = PreemptCause.PRIORITY if own else PreemptCause.RECLAIM
            if own:
                reason = (
                    f"{task.key} (priority {base}) preempts lower-priority {target.key} "
                    f"(priority {victim.effective}) within team {book.team.name}'s guarantee"
                )
            else:
                reason = (
                    f"team {book.team.name} reclaims GPUs within its guarantee for {task.key}: "
                    f"{target.key} runs on GPUs borrowed by team {victim.book.team.name}"
                )
            self.preempts.append(
                Preempt(
                    victim=target.key,
                    preemptor=task.key,
                    cause=cause,
                    grace_s=grace_for(target.checkpoint_grace_s),
                    gpus=victim.gpus,
                    work_lost_gpu_s=victim.work_lost,
                    reason=reason,
                )
            )
