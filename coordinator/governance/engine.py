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

Cost: one round over 10,000 tasks must stay well under 50 ms (bench/governance_decision.py).
What keeps it there: policy look-ups resolved once per round, not per task; preemption
candidates ordered one priority level at a time, only as far as preemptors reach; running
totals and shared heads instead of rescans, and victims taken out of the lists as they are
preempted; cheap bounds before a preemptor's room is built; room on nodes tried on an
overlay that counts pod-sized slots instead of placing pods (:mod:`.room`) and, once only
room is missing, a sieve per list that drops for the whole round the tasks that can make
room for no preemptor; waiting reasons shared by the many tasks they fit alike. And few
objects that live through the round (a team's own tasks are made candidate objects only
when tried, taken ones are let go, no sort keys are kept) and no reference cycles, so the
garbage collector runs half as often and a round's objects are freed as it ends.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import attrgetter
from typing import Protocol

from coordinator.governance.decisions import Admit, Decisions, Preempt, PreemptCause
from coordinator.governance.fairshare import fair_share_key, scaled_guarantees
from coordinator.governance.placement import FreeGpus
from coordinator.governance.policy import (
    AdmissionOrder,
    IdleComputeAllocation,
    Lending,
    Policy,
    Team,
    VictimOrder,
)
from coordinator.governance.room import PodShape, Reach, Room
from coordinator.governance.tasks import GovernanceState, RequeueCause, Task, TaskState

# Set membership instead of the TaskState properties: the round tests every task's state.
_HOLDING = frozenset(state for state in TaskState if state.holding)
_WAITING = frozenset(state for state in TaskState if state.waiting)


def effective_priority(task: Task, policy: Policy, weights: dict[str, int] | None = None) -> int:
    """The class weight plus ``agingBoostPerPreemption`` for each time the task was
    preempted, the boost capped at ``agingMaxBoost``. The boost moves the task up the queue
    and protects it from priority preemption; it never lets it preempt anything (the
    preemptor's own class weight decides that), so aging cannot invert priorities."""
    base = _weight(task, policy, weights if weights is not None else policy.class_weights())
    settings = policy.preemption
    boost = min(
        settings.aging_max_boost, settings.aging_boost_per_preemption * task.times_preempted
    )
    return base + boost


def _weight(task: Task, policy: Policy, weights: dict[str, int]) -> int:
    if task.priority_class is not None and task.priority_class in weights:
        return weights[task.priority_class]
    if policy.default_priority_class is not None:
        return weights[policy.default_priority_class]
    return 0


def decide(state: GovernanceState, policy: Policy, now: float) -> Decisions:
    """Admissions and preemptions for this moment. See the module docstring for the rules."""
    return _Round(state, policy, now).run()


class _Priorities:
    """The policy's priority arithmetic, resolved once per round.

    A task's effective priority depends only on its class and how often it was preempted,
    so the class table (with the default class as fallback) and the aging boosts are
    tables here; a large round asks for thousands of priorities. Values equal
    :func:`effective_priority`.
    """

    def __init__(self, policy: Policy) -> None:
        # Keyed by class or None, so a task's class is looked up as it is (no class and an
        # unknown class both fall back to the default class's weight, or 0).
        self._weights: dict[str | None, int] = {
            name: weight for name, weight in policy.class_weights().items()
        }
        default = policy.default_priority_class
        self._fallback = self._weights[default] if default is not None else 0
        self._boosts = _Boosts(
            policy.preemption.aging_boost_per_preemption, policy.preemption.aging_max_boost
        )

    def base(self, task: Task) -> int:
        """The class weight alone: what a preemptor is judged by."""
        return self._weights.get(task.priority_class, self._fallback)

    def effectives(self, tasks: Iterable[Task]) -> list[int]:
        """Each task's class weight plus its aging boost, capped (see
        :func:`effective_priority`): computed for many tasks at once, as a round ranks
        thousands (one call instead of one per task)."""
        weight, fallback, boosts = self._weights.get, self._fallback, self._boosts
        return [
            weight(task.priority_class, fallback) + boosts[task.times_preempted] for task in tasks
        ]


class _Boosts(dict[int, int]):
    """The aging boost for each count of preemptions, ``min(cap, step x count)``, filled in
    as counts are met: a round meets only a few, and a look-up costs less than the sum."""

    def __init__(self, step: int, cap: int) -> None:
        super().__init__()
        self._step = step
        self._cap = cap

    def __missing__(self, preempted: int) -> int:
        boost = self[preempted] = min(self._cap, self._step * preempted)
        return boost


def _sort_queue(queue: list[Task], admission: AdmissionOrder, priorities: _Priorities) -> None:
    """First-come-first-serve: arrival, then key. Task-ranking: highest effective priority,
    then arrival, then key.

    Done as successive stable sorts, least significant first, which gives the same order as
    one sort on the tuple: comparing plain strings and floats is much cheaper than
    comparing tuples, and a queue holds thousands of tasks."""
    queue.sort(key=_task_key)
    queue.sort(key=_queued_at)
    if admission is AdmissionOrder.TASK_RANKING:
        ranks = priorities.effectives(queue)
        # reverse keeps ties in order
        order = sorted(range(len(queue)), key=ranks.__getitem__, reverse=True)
        queue[:] = [queue[index] for index in order]


_task_key = attrgetter("key")
_queued_at = attrgetter("queued_at")


def _admitted(task: Task) -> float:
    return task.admitted_at if task.admitted_at is not None else task.queued_at


@dataclass(slots=True)
class _Book:
    """A team's running account during one round."""

    index: int
    team: Team
    guarantee: int
    borrow_limit: int
    used: int = 0
    """GPUs of its admitted and running tasks (preempted ones are leaving), plus the
    demand of its tasks waiting on a preemption: those GPUs are on their way to the team,
    so a later task must not count on the same room in its guarantee."""
    members: list[Task] = field(default_factory=list)
    may_borrow: bool = field(init=False)
    """Its lending mode borrows and its borrow limit is above 0 (read for every borrower)."""

    def __post_init__(self) -> None:
        self.may_borrow = self.team.lending.borrows and self.borrow_limit > 0

    @property
    def borrowed(self) -> int:
        return max(0, self.used - self.guarantee)

    @property
    def idle(self) -> int:
        return max(0, self.guarantee - self.used)


# Not frozen: a frozen dataclass costs several times as much to build (each field goes
# through object.__setattr__), and a round builds one per candidate task. Nothing changes it.
@dataclass(slots=True, eq=False)
class _Victim:
    """A running task as a preemption candidate, with what the choice reads copied out."""

    task: Task
    key: str
    book: _Book
    gpus: int
    effective: int
    work_lost: float
    """GPU-seconds since its last checkpoint (or start), as the choice and the decision
    read them."""
    rank: int = 0
    """Place in its list as built (a list loses the victims taken, ranks stay)."""


_ANY = 1 << 62
"""A priority above every class weight and boost: "no bound"."""


class _Candidates:
    """Makes running tasks preemption candidates and puts them in victim order.

    Kept apart from the round on purpose: the round caches candidates, and a cache holding
    something that refers back to the round would make a reference cycle, leaving the
    round's thousands of objects to the cyclic garbage collector instead of freeing them
    as the round ends (more collections, some of them full ones, inside later rounds)."""

    def __init__(self, now: float, *, checkpoint_aware: bool) -> None:
        self.now = now
        self.checkpoint_aware = checkpoint_aware

    def victim(self, task: Task, book: _Book, effective: int) -> _Victim:
        return _Victim(task, task.key, book, task.gpus, effective, task.work_at_risk(self.now))

    def sort(self, victims: list[_Victim]) -> None:
        """DESIGN.md's order after "borrowed first", which is the same for every victim of
        one list (a list holds either borrowed tasks or a team's own): lower priority, then
        least work lost (checkpoint-aware), then most recently admitted, then key.

        The keys are built for the sort only: kept on every victim, they would be a
        thousand more objects that live through the round (more garbage collections)."""
        if self.checkpoint_aware:
            victims.sort(key=self._checkpoint_aware_key)
        else:
            victims.sort(key=_recent_first_key)

    def _checkpoint_aware_key(self, victim: _Victim) -> tuple[int, float, float, str]:
        return (victim.effective, victim.work_lost, -_admitted(victim.task), victim.key)

    def order_level(self, tasks: list[Task]) -> tuple[list[Task], list[float]]:
        """Tasks of one priority level in victim order (as :meth:`sort` orders their
        candidates), with the work each would lose."""
        now = self.now
        work = [task.work_at_risk(now) for task in tasks]
        keys: list[tuple[float, float, str]] | list[tuple[float, str]]
        if self.checkpoint_aware:
            keys = [
                (lost, -_admitted(task), task.key) for task, lost in zip(tasks, work, strict=True)
            ]
        else:
            keys = [(-_admitted(task), task.key) for task in tasks]
        order = sorted(range(len(tasks)), key=keys.__getitem__)
        return [tasks[index] for index in order], [work[index] for index in order]


def _recent_first_key(victim: _Victim) -> tuple[int, float, str]:
    return (victim.effective, -_admitted(victim.task), victim.key)


class _Round:
    """One call of :func:`decide`: the teams' accounts, the queue and what is decided."""

    def __init__(self, state: GovernanceState, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.priorities = _Priorities(policy)
        self.candidates = _Candidates(
            now, checkpoint_aware=policy.preemption.victim_order is VictimOrder.CHECKPOINT_AWARE
        )
        self.admits: list[Admit] = []
        self.preempts: list[Preempt] = []
        self.waiting: dict[str, str] = {}
        self.taken: set[str] = set()
        self.reserved = 0
        self._borrowed: _Borrowed | None = None
        self._own: dict[int, _OwnVictims] = {}
        self._levels: dict[int, _Levels] = {}
        self._reclaimable_on: dict[str, int] | None = None
        self._with_own_on: dict[int, dict[str, int]] = {}
        self._sieves: dict[tuple[int, int, int], _Sieve] = {}
        self._pods: dict[tuple[int, ...], PodShape] = {}
        self._in_flight: dict[str, int] | None = None
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
        guarantees = scaled_guarantees([team.quota.gpus for team in policy.teams], healthy)
        self.books = [
            _Book(index, team, guarantee, team.borrow_limit_gpus)
            for index, (team, guarantee) in enumerate(zip(policy.teams, guarantees, strict=True))
        ]
        self.book_of = {book.team.namespace: book for book in self.books}
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
        book_of, inflight = self.book_of, self.inflight  # locals: this loop sees every task
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
                if preemptor is not None and task.requeue_cause is RequeueCause.PREEMPTION:
                    self.claimed[preemptor] = self.claimed.get(preemptor, 0) + task.gpus
        # Every team's borrowed GPUs added up, kept current by _change_used.
        self.borrowed_total = sum(book.borrowed for book in self.books)

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

    def _enqueue(self, task: Task) -> None:
        book = self.book_of.get(task.namespace)
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

    def _change_used(self, book: _Book, delta: int) -> None:
        # Keeps borrowed_total current, so each preemption attempt reads the GPUs others
        # borrowed in O(1) instead of adding up every team's again.
        before = book.used
        book.used = before + delta
        self.borrowed_total += max(0, before + delta - book.guarantee) - max(
            0, before - book.guarantee
        )

    def run(self) -> Decisions:
        if self.queue:
            _sort_queue(self.queue, self.policy.admission, self.priorities)
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
            book = self.book_of[task.namespace]
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
        book_of, demand_of = self.book_of, self.demand
        precommitted = self.precommitted
        # Why a task waits, by team and demand: the same words for the many tasks alike.
        unfree: dict[tuple[int, int], str] = {}
        for task in self.queue:
            book = book_of[task.namespace]
            demand = demand_of[task.key]
            if precommitted and task.key in precommitted:
                self.reserved -= precommitted.pop(task.key)
                self._change_used(book, -demand)
            if demand == 0:
                self._admit_placed(task, book, demand, borrowing=False)
            elif book.used + demand > book.guarantee:
                beyond.append(task)
            elif demand <= self.free - self.reserved:
                if not self._admit_placed(task, book, demand, borrowing=False):
                    # Enough GPUs are free, but not on nodes that hold the pods: preempting
                    # may make room where they would fit (if not, the reason stays).
                    self._preempt_for(task, book, demand)
            elif not self._preempt_for(task, book, demand):
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
            book.idle for book in self.books if book.team.lending is Lending.DONT_LEND
        )
        borrowers: list[Task] = []
        # One reason per team that cannot borrow: nothing it holds changes in this loop.
        cannot_borrow: dict[int, str] = {}
        for task in beyond:
            book = self.book_of[task.namespace]
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
            book = self.book_of[task.namespace]
            demand = self.demand[task.key]
            refusal = refusals.get((book.index, demand))
            if refusal is None:
                refusal = self._borrow_refusal(book, demand, reserved_idle)
                if refusal is None:
                    if self._admit_placed(task, book, demand, borrowing=True):
                        refusals.clear()
                    continue
                refusals[book.index, demand] = refusal
            self.waiting[task.key] = refusal
        admitted = {admit.task for admit in self.admits}
        return [task for task in beyond if task.key not in admitted]

    @staticmethod
    def _cannot_borrow(book: _Book) -> str:
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
            queues.setdefault(self.book_of[task.namespace].index, deque()).append(task)
        heap = [self._share_key(index) for index in queues]
        heapq.heapify(heap)
        while heap:
            index = heapq.heappop(heap)[2]
            pending = queues[index]
            book = self.books[index]
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
        book = self.books[index]
        return fair_share_key(book.borrowed, book.team.fair_share_weight, index)

    def _borrow_refusal(self, book: _Book, demand: int, reserved_idle: int) -> str | None:
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
            book = self.book_of[task.namespace]
            if not book.team.preempt_lower_priority or book.used > book.guarantee:
                continue  # a team beyond its own quota never preempts for priority
            demand = self.demand[task.key]
            if book.used + demand > book.guarantee:
                self._preempt_for(task, book, demand)

    # -- admission ---------------------------------------------------------------------------

    def _admit_placed(self, task: Task, book: _Book, demand: int, *, borrowing: bool) -> bool:
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

    def _preempt_for(self, task: Task, book: _Book, demand: int) -> bool:
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
        if not self._victims_may_suffice(task, book, need_free, need_quota):
            return False
        if room is None:
            room = self._room_for(task)
        victims = self._choose_victims(task, book, need_free, need_quota, room)
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

    def _could_free_on(self, book: _Book, *, own_allowed: bool) -> Mapping[str, int]:
        """GPUs per node of every task that could be a victim for a task of ``book``: the
        borrowed tasks of all teams, and the team's own when it may preempt them. More
        than the real candidates (taken ones, higher priorities), which is safe: it only
        rules out nodes that stay short even so."""
        if self._reclaimable_on is None:
            self._reclaimable_on = _gpus_on_nodes(self._borrowed_list().tasks, {})
        if not own_allowed:
            return self._reclaimable_on
        with_own = self._with_own_on.get(book.index)
        if with_own is None:
            with_own = _gpus_on_nodes(book.members, dict(self._reclaimable_on))
            self._with_own_on[book.index] = with_own
        return with_own

    @staticmethod
    def _hold(room: Room | None, short: int, available: int) -> int:
        """Reserves the free GPUs a preemptor counts on besides those being freed for it,
        and returns how many. Per node, exactly those of a placement of its pods (so no
        later task of the round is placed on them); as a count, ``short`` of them, none
        when victims free more than it needs (that surplus is not free yet: reserving
        "less than nothing" would let others be admitted on GPUs still in use)."""
        if room is not None:
            return room.hold()
        return max(0, min(available, short))

    def _record_preemptions(self, task: Task, book: _Book, victims: list[_Victim]) -> None:
        base = self.priorities.base(task)
        grace_default = self.policy.preemption.default_grace_seconds
        for victim in victims:
            target = victim.task
            self.taken.add(victim.key)
            self._unlist(victim, book)
            self._change_used(victim.book, -victim.gpus)
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
            grace = target.checkpoint_grace_s
            self.preempts.append(
                Preempt(
                    victim=target.key,
                    preemptor=task.key,
                    cause=cause,
                    grace_s=grace if grace is not None else grace_default,
                    gpus=victim.gpus,
                    work_lost_gpu_s=victim.work_lost,
                    reason=reason,
                )
            )

    def _choose_victims(
        self, task: Task, book: _Book, need_free: int, need_quota: int, room: Room | None
    ) -> list[_Victim] | None:
        """The fewest victims, in DESIGN.md's order, that free ``need_free`` GPUs, bring
        the team within its guarantee (``need_quota``) and, with capacity per node, leave
        room for the task's pods (``room``, which holds the chosen victims' GPUs when this
        returns): greedy in order, then pruned from the end of anything not needed. None
        when no such set exists, so no task is preempted for a gang that would still not
        fit.

        Borrowed tasks of other teams come first (reclaim), then the team's own
        lower-priority tasks, which only a team with preemptLowerPriority that is not beyond
        its own quota may touch (so the team has no borrowed tasks of its own)."""
        own_allowed = self._may_preempt_own(book)
        # Whether the pods fit, read only once the counts are met: placing is the dearer test.
        choice = _Choice(
            need_free, need_quota, room, fitted=room is None or (need_free <= 0 and room.fits())
        )
        if room is not None:
            room.rule_out(self._could_free_on(book, own_allowed=own_allowed))
        self._reclaim_into(choice, task, book, own_allowed=own_allowed)
        if own_allowed and not choice.complete:
            self._preempt_own_into(choice, task, book)
        if not choice.complete:
            return None
        return _pruned(choice.chosen, book, choice.left_free, choice.left_quota, room)

    def _reclaim_into(self, choice: _Choice, task: Task, book: _Book, *, own_allowed: bool) -> None:
        """Adds to ``choice`` borrowed tasks of other teams, in victim order: every one that
        may be reclaimed while GPUs are missing, then, when only room is, those on nodes
        that could make room (from a sieve, which has dropped the many that never could)."""
        preempted_by = task.preempted_by
        resume: int | None = None
        for victim in self._live_reclaim_victims():
            if choice.left_free <= 0:
                resume = victim.rank
                break
            if self._may_reclaim(victim, book, preempted_by, choice.lowered):
                choice.take(victim, own=False)
        room = choice.room
        if resume is None or room is None or choice.fitted:
            return
        for victim in self._sieve(None, book, own_allowed, room).from_rank(resume, _ANY):
            if choice.fitted:
                break
            if room.may_help(victim.task.placement) and self._may_reclaim(
                victim, book, preempted_by, choice.lowered
            ):
                choice.take(victim, own=False)

    def _may_reclaim(
        self, victim: _Victim, book: _Book, preempted_by: str | None, lowered: dict[int, int]
    ) -> bool:
        lender = victim.book
        if lender is book or victim.key in self.taken:
            return False
        if victim.key == preempted_by:
            return False  # the task that preempted this one, still running: no ping-pong
        # That team back within its guarantee (with what this choice takes from it already):
        # nothing more to reclaim from it.
        return lender.used - lowered.get(lender.index, 0) > lender.guarantee

    def _preempt_own_into(self, choice: _Choice, task: Task, book: _Book) -> None:
        """Adds to ``choice`` the team's own tasks below the preemptor's class weight,
        lowest priority first, as :meth:`_reclaim_into` does for borrowed ones."""
        base = self.priorities.base(task)
        preempted_by = task.preempted_by
        resume: int | None = None
        for victim in self._live_own_victims(book, base):  # none taken
            if choice.left_free <= 0 and choice.left_quota <= 0:
                resume = victim.rank
                break
            if victim.effective >= base:
                return  # never an equal-or-higher priority task for priority reasons
            if victim.key != preempted_by:
                choice.take(victim, own=True)
        room = choice.room
        if resume is None or room is None or choice.fitted:
            return
        for victim in self._sieve(book, book, True, room).from_rank(resume, base):
            if choice.fitted or victim.effective >= base:
                break
            if victim.key != preempted_by and room.may_help(victim.task.placement):
                choice.take(victim, own=True)

    def _sieve(self, listed: _Book | None, book: _Book, own_allowed: bool, room: Room) -> _Sieve:
        """The sieve over the borrowed tasks of all teams (``listed`` None) or over a team's
        own, for preemptors of ``book`` with pods the size of ``room``'s smallest."""
        could_free_on = self._could_free_on(book, own_allowed=own_allowed)
        key = (
            -1 if listed is None else listed.index,
            book.index if own_allowed else -1,
            room.smallest,
        )
        sieve = self._sieves.get(key)
        if sieve is None:
            listing: _Listing = (
                self._borrowed_list() if listed is None else self._own_victims_of(listed)
            )
            reach = room.reach(could_free_on, self._in_flight_on())
            sieve = self._sieves[key] = _Sieve(listing, self.taken, reach)
        return sieve

    def _in_flight_on(self) -> Mapping[str, int]:
        """GPUs per node of every preempted task still leaving, whoever preempted it."""
        if self._in_flight is None:
            on: dict[str, int] = {}
            for placements in self.leaving.values():
                for placement in placements:
                    for node, gpus in placement.items():
                        on[node] = on.get(node, 0) + gpus
            self._in_flight = on
        return self._in_flight

    def _unlist(self, victim: _Victim, book: _Book) -> None:
        """Takes a victim now preempted out of the list it was chosen from, so that later
        preemptors do not step over it again (a borrowed one sits past the shared head,
        behind tasks that were tried and pruned) and it is freed (one more object living
        through the round is a step closer to a garbage collection). A task listed twice,
        borrowed and in its own team's list, stays in the other one, where the ``taken``
        check skips it."""
        if victim.book is book:
            self._own_victims_of(book).forget(victim.rank)
        else:
            self._borrowed_list().forget(victim)

    @staticmethod
    def _may_preempt_own(book: _Book) -> bool:
        return book.team.preempt_lower_priority and book.used <= book.guarantee

    def _victims_may_suffice(
        self, task: Task, book: _Book, need_free: int, need_quota: int
    ) -> bool:
        """Upper bounds (taken tasks still count) that give up early on the many attempts
        that cannot succeed, before any victim is looked at; part of the rule, as
        :meth:`_choose_victims` finds no victims when they fail. At least one victim is
        needed: the caller asks only when what is free (or on its way) is not enough."""
        own_allowed = self._may_preempt_own(book)
        if need_quota > 0 and not own_allowed:
            return False
        own_bound = (
            self._own_victims_of(book).gpus_below(self.priorities.base(task)) if own_allowed else 0
        )
        reclaim_bound = self.borrowed_total - book.borrowed
        return not (
            need_quota > own_bound
            or need_free > reclaim_bound + own_bound
            or reclaim_bound + own_bound <= 0
        )

    def _live_reclaim_victims(self) -> Iterator[_Victim]:
        """Tasks running on borrowed GPUs, of every team, in victim order, from the first one
        still available (a shared head skips those taken or no longer reclaimable, so many
        preemptors in one round do not rescan them)."""
        borrowed = self._borrowed_list()
        victims, head = borrowed.live, borrowed.head
        while head < len(victims) and (
            victims[head].key in self.taken
            or victims[head].book.used <= victims[head].book.guarantee
        ):
            head += 1
        borrowed.head = head
        return islice(victims, head, None)

    def _borrowed_list(self) -> _Borrowed:
        """Every team's borrowed tasks in victim order, built on first use."""
        if self._borrowed is None:
            victims: list[_Victim] = []
            for book in self.books:
                if book.borrowed > 0:
                    victims.extend(self._borrowed_victims(book))
            self.candidates.sort(victims)
            for rank, victim in enumerate(victims):
                victim.rank = rank
            self._borrowed = _Borrowed(victims)
        return self._borrowed

    def _levels_of(self, book: _Book) -> _Levels:
        levels = self._levels.get(book.index)
        if levels is None:
            levels = _Levels(book.members, self.priorities)
            self._levels[book.index] = levels
        return levels

    def _borrowed_victims(self, book: _Book) -> list[_Victim]:
        """The team's tasks that run on borrowed GPUs: its tasks fill its guarantee highest
        priority first (then admitted earliest, then key), and those past it are borrowed.

        Whole priority levels are filled at once; only the level that crosses the
        guarantee is ordered task by task, and every level below it is borrowed whole."""
        levels = self._levels_of(book)
        make = self.candidates.victim
        victims: list[_Victim] = []
        filled = 0
        for effective in reversed(levels.ascending):
            members = levels.tasks[effective]
            if filled > book.guarantee:
                victims.extend(make(member, book, effective) for member in members)
            elif filled + levels.gpus[effective] <= book.guarantee:
                filled += levels.gpus[effective]
            else:
                for member in sorted(members, key=_admitted_then_key):
                    filled += member.gpus
                    if filled > book.guarantee:
                        victims.append(make(member, book, effective))
        return victims

    def _own_victims_of(self, book: _Book) -> _OwnVictims:
        own = self._own.get(book.index)
        if own is None:
            # Only a team within its guarantee preempts its own tasks: none of them counts as
            # borrowed, so the order is by priority first.
            own = _OwnVictims(self._levels_of(book), book, self.candidates)
            self._own[book.index] = own
        return own

    def _live_own_victims(self, book: _Book, below: int) -> Iterator[_Victim]:
        return self._own_victims_of(book).from_head(self.taken, below)


@dataclass(slots=True)
class _Choice:
    """One preemptor's victims as the greedy search takes them, and what is still missing."""

    left_free: int
    left_quota: int
    room: Room | None
    fitted: bool
    chosen: list[_Victim] = field(default_factory=list)
    lowered: dict[int, int] = field(default_factory=dict)
    """GPUs taken so far from each lending team (by team index)."""

    @property
    def complete(self) -> bool:
        return self.left_free <= 0 and self.left_quota <= 0 and self.fitted

    def take(self, victim: _Victim, *, own: bool) -> None:
        self.chosen.append(victim)
        self.left_free -= victim.gpus
        if own:
            self.left_quota -= victim.gpus
        else:
            self.lowered[victim.book.index] = self.lowered.get(victim.book.index, 0) + victim.gpus
        if self.room is not None:
            self.room.add(victim.task.placement)
            self.fitted = self.left_free <= 0 and self.room.fits()


class _Listing(Protocol):
    """A list of candidates in victim order, read by rank, that may grow."""

    def ranked(self) -> int:
        """How many are ordered so far (ranks 0 to this, exclusive)."""
        ...

    def task_at(self, rank: int) -> Task: ...

    def victim_at(self, rank: int) -> _Victim: ...

    def build_next_level(self, below: int) -> bool:
        """Orders more, below priority ``below``; False when there are none."""
        ...


class _Sieve:
    """The victims of one list that might still make room for pods of one size, for the
    preemptors that count the same candidates per node.

    Once the GPUs are enough and only room is missing, a preemptor tries only the tasks
    on nodes that could hold a pod (:meth:`Room.may_help`); in a full cluster most are
    on no such node, and a round has dozens of preemptors that try the same tasks in the
    same order. A task that can help none of them (:meth:`Reach.never_helps`) is dropped
    here for good when it is first met, as are taken ones, so later preemptors step over
    it no more (and it is never made a candidate object). Those kept are tried exactly as
    before: the choice is the same."""

    def __init__(self, listing: _Listing, taken: set[str], reach: Reach) -> None:
        self._listing = listing
        self._taken = taken
        self._reach = reach
        self._kept: list[int] = []
        """Ranks of the victims that may still help, in order."""
        self._seen = 0
        """Every rank below is kept, or was dropped."""
        self._tried = 0
        """Ranks below were tested by :meth:`Reach.never_helps` (or passed over)."""

    def from_rank(self, rank: int, below: int) -> Iterator[_Victim]:
        """The victims from ``rank`` on, in order, not taken, that may help (ordering no
        more of the list than priority ``below``)."""
        while self._seen <= rank and self._pull(below):
            pass
        kept, listing, taken = self._kept, self._listing, self._taken
        never_helps = self._reach.never_helps
        index = bisect.bisect_left(kept, rank)
        while index < len(kept) or self._pull(below):
            at = kept[index]
            task = listing.task_at(at)
            if task.key in taken or (at >= self._tried and never_helps(task.placement)):
                del kept[index]
                continue
            # Tested once only: a victim kept goes through each preemptor's own test as
            # before, so testing it again as the free GPUs shrink could only save time.
            self._tried = max(self._tried, at + 1)
            yield listing.victim_at(at)
            index += 1

    def _pull(self, below: int) -> bool:
        """Takes in the ranks not seen yet, ordering more of the list if need be; False
        when there are none."""
        listing = self._listing
        if self._seen == listing.ranked() and not listing.build_next_level(below):
            return False
        end = listing.ranked()
        self._kept.extend(range(self._seen, end))
        self._seen = end
        return True


def _pruned(
    chosen: list[_Victim], book: _Book, left_free: int, left_quota: int, room: Room | None
) -> list[_Victim]:
    """``chosen`` less the victims, latest first, whose GPUs are not needed after all
    (``left_free`` and ``left_quota`` are at or below zero: what the set frees beyond need;
    ``room``, when given, must still fit the pods without them)."""
    kept: list[_Victim] = []
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


def _gpus_on_nodes(tasks: Iterable[Task], total: dict[str, int]) -> dict[str, int]:
    """``total`` plus the GPUs of ``tasks`` on each node."""
    for task in tasks:
        for node, gpus in task.placement.items():
            total[node] = total.get(node, 0) + gpus
    return total


def _admitted_then_key(task: Task) -> tuple[float, str]:
    return (_admitted(task), task.key)


class _Levels:
    """A team's running tasks grouped by effective priority, with the GPUs of each level.

    Both victim orders are by priority first and a round has only a few distinct levels,
    so the work of ordering tasks is done only for the levels a round reaches."""

    def __init__(self, members: list[Task], priorities: _Priorities) -> None:
        self.tasks: dict[int, list[Task]] = {}
        self.gpus: dict[int, int] = {}
        for member, effective in zip(members, priorities.effectives(members), strict=True):
            level = self.tasks.get(effective)
            if level is None:
                self.tasks[effective] = [member]
                self.gpus[effective] = member.gpus
            else:
                level.append(member)
                self.gpus[effective] += member.gpus
        self.ascending = sorted(self.tasks)


class _OwnVictims:
    """A team's tasks in victim order (lowest priority first), ordered a level at a time
    as preemptors reach it (a preemptor stops at its own class weight, so the levels above
    are usually never ordered), with a head past those taken and the GPUs below any
    priority for a quick bound.

    A task is made a candidate (:class:`_Victim`) only when a preemptor looks at it: most
    are not (the sieve rules them out by their nodes), and one object for each would be a
    thousand more that live through the round, and more garbage collections."""

    def __init__(self, levels: _Levels, book: _Book, candidates: _Candidates) -> None:
        self.head = 0
        self._levels = levels
        self._book = book
        self._candidates = candidates
        self._built = 0
        # By rank (the place in victim order): the task, its priority level and its work.
        self._tasks: list[Task] = []
        self._effective: list[int] = []
        self._work: list[float] = []
        self._made: dict[int, _Victim] = {}
        self._cumulative = list(
            accumulate((levels.gpus[level] for level in levels.ascending), initial=0)
        )

    def gpus_below(self, priority: int) -> int:
        """GPUs of the team's tasks below ``priority``, taken ones included."""
        return self._cumulative[bisect.bisect_left(self._levels.ascending, priority)]

    def ranked(self) -> int:
        return len(self._tasks)

    def task_at(self, rank: int) -> Task:
        return self._tasks[rank]

    def victim_at(self, rank: int) -> _Victim:
        victim = self._made.get(rank)
        if victim is None:
            task = self._tasks[rank]
            victim = self._made[rank] = _Victim(
                task,
                task.key,
                self._book,
                task.gpus,
                self._effective[rank],
                self._work[rank],
                rank,
            )
        return victim

    def forget(self, rank: int) -> None:
        """A victim taken: it is skipped from now on, and need not live on."""
        self._made.pop(rank, None)

    def from_head(self, taken: set[str], below: int) -> Iterator[_Victim]:
        """The victims in order from the first one not taken, skipping those taken,
        ordering the levels below priority ``below`` on demand (those at or above it may
        be ordered already)."""
        tasks = self._tasks
        while self.head < len(tasks) and tasks[self.head].key in taken:
            self.head += 1
        rank = self.head
        while rank < len(tasks) or self.build_next_level(below):
            if tasks[rank].key not in taken:
                yield self.victim_at(rank)
            rank += 1

    def build_next_level(self, below: int) -> bool:
        """Orders the next priority level's tasks after those ordered, if it is below
        priority ``below`` (no preemptor takes a task of its own priority or above);
        False when none is."""
        ascending = self._levels.ascending
        if self._built == len(ascending) or ascending[self._built] >= below:
            return False
        level = ascending[self._built]
        tasks, work = self._candidates.order_level(self._levels.tasks[level])
        self._tasks.extend(tasks)
        self._work.extend(work)
        self._effective.extend([level] * len(tasks))
        self._built += 1
        return True


class _Borrowed:
    """The borrowed tasks of every team as candidates, in victim order: as a live list
    that loses the victims taken (preemptors walk it from a shared head), and by rank for
    the sieves (a rank stays as victims are taken)."""

    def __init__(self, victims: list[_Victim]) -> None:
        self.live = victims
        self.head = 0
        self.tasks = [victim.task for victim in victims]
        """All of them, by rank."""
        self._victims = {victim.rank: victim for victim in victims}

    def ranked(self) -> int:
        return len(self.tasks)

    def task_at(self, rank: int) -> Task:
        return self.tasks[rank]

    def victim_at(self, rank: int) -> _Victim:
        return self._victims[rank]

    def build_next_level(self, below: int) -> bool:
        return False  # all built at once: they are ordered across teams

    def forget(self, victim: _Victim) -> None:
        """A victim taken: out of the live list (it is past the head: nothing moves), and
        no sieve yields it again."""
        del self.live[self.live.index(victim, self.head)]
        del self._victims[victim.rank]
