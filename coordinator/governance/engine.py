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
candidates built one priority level at a time, only as far as preemptors reach; running
totals and shared heads instead of rescans; room on nodes tried on an overlay that counts
pod-sized slots instead of placing pods; and no reference cycles, so a round's objects are
freed as it ends instead of waiting for the cyclic garbage collector.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice
from operator import attrgetter

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
    so the class table (with the default class as fallback) is built once here; a large
    round asks for thousands of priorities. Values equal :func:`effective_priority`.
    """

    def __init__(self, policy: Policy) -> None:
        # Keyed by class or None, so a task's class is looked up as it is (no class and an
        # unknown class both fall back to the default class's weight, or 0).
        self._weights: dict[str | None, int] = {
            name: weight for name, weight in policy.class_weights().items()
        }
        default = policy.default_priority_class
        self._fallback = self._weights[default] if default is not None else 0
        self._boost_step = policy.preemption.aging_boost_per_preemption
        self._boost_cap = policy.preemption.aging_max_boost

    def base(self, task: Task) -> int:
        """The class weight alone: what a preemptor is judged by."""
        return self._weights.get(task.priority_class, self._fallback)

    def effective(self, task: Task) -> int:
        """The class weight plus the aging boost, capped (see :func:`effective_priority`)."""
        return self._weights.get(task.priority_class, self._fallback) + min(
            self._boost_cap, self._boost_step * task.times_preempted
        )


def _sort_queue(queue: list[Task], admission: AdmissionOrder, priorities: _Priorities) -> None:
    """First-come-first-serve: arrival, then key. Task-ranking: highest effective priority,
    then arrival, then key.

    Done as successive stable sorts, least significant first, which gives the same order as
    one sort on the tuple: comparing plain strings and floats is much cheaper than
    comparing tuples, and a queue holds thousands of tasks."""
    queue.sort(key=_task_key)
    queue.sort(key=_queued_at)
    if admission is AdmissionOrder.TASK_RANKING:
        queue.sort(key=priorities.effective, reverse=True)  # reverse keeps ties in order


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

    order: tuple[object, ...]
    task: Task
    key: str
    book: _Book
    gpus: int
    effective: int


class _Candidates:
    """Makes running tasks preemption candidates, in victim order.

    Kept apart from the round on purpose: the round caches candidates, and a cache holding
    something that refers back to the round would make a reference cycle, leaving the
    round's thousands of objects to the cyclic garbage collector instead of freeing them
    as the round ends (more collections, some of them full ones, inside later rounds)."""

    def __init__(self, now: float, *, checkpoint_aware: bool) -> None:
        self.now = now
        self.checkpoint_aware = checkpoint_aware

    def victim(self, task: Task, book: _Book, effective: int, *, borrowed: bool) -> _Victim:
        admitted = _admitted(task)
        order: tuple[object, ...]
        if self.checkpoint_aware:
            order = (not borrowed, effective, task.work_at_risk(self.now), -admitted, task.key)
        else:
            order = (not borrowed, effective, -admitted, task.key)
        return _Victim(order, task, task.key, book, task.gpus, effective)


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
        self._reclaimable: list[_Victim] | None = None
        self._reclaim_head = 0
        self._own: dict[int, _OwnVictims] = {}
        self._levels: dict[int, _Levels] = {}
        self._reclaimable_on: dict[str, int] | None = None
        self._with_own_on: dict[int, dict[str, int]] = {}
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

    def _change_used(self, book: _Book, delta: int) -> None:
        # Keeps borrowed_total current, so each preemption attempt reads the GPUs others
        # borrowed in O(1) instead of adding up every team's again.
        self.borrowed_total -= book.borrowed
        book.used += delta
        self.borrowed_total += book.borrowed

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
            demand = task.gpus
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
        book_of = self.book_of
        precommitted = self.precommitted
        for task in self.queue:
            book = book_of[task.namespace]
            demand = task.gpus
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
                self.waiting[task.key] = (
                    f"within team {book.team.name}'s guarantee but {demand} GPUs are not free "
                    f"and nothing can be preempted for it"
                )
        return beyond

    # -- pass 2 ------------------------------------------------------------------------------

    def _borrowing_pass(self, beyond: list[Task]) -> list[Task]:
        """Admits borrowers it can; returns the tasks still waiting, in queue order."""
        reserved_idle = sum(
            book.idle for book in self.books if book.team.lending is Lending.DONT_LEND
        )
        borrowers: list[Task] = []
        for task in beyond:
            book = self.book_of[task.namespace]
            if book.may_borrow:
                borrowers.append(task)
            else:
                why = (
                    f"lending: {book.team.lending}"
                    if not book.team.lending.borrows
                    else "its borrow limit is 0 GPUs"
                )
                self.waiting[task.key] = (
                    f"team {book.team.name} holds {book.used} of its {book.guarantee} guaranteed "
                    f"GPUs and cannot borrow ({why})"
                )
        if self.policy.idle_compute is IdleComputeAllocation.FAIR_SHARE:
            order: Iterator[Task] = self._fair_share_order(borrowers)
        else:
            order = iter(borrowers)
        for task in order:
            self._try_borrow(task, reserved_idle)
        admitted = {admit.task for admit in self.admits}
        return [task for task in beyond if task.key not in admitted]

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

    def _try_borrow(self, task: Task, reserved_idle: int) -> None:
        book = self.book_of[task.namespace]
        demand = task.gpus
        borrowed_after = book.used + demand - book.guarantee
        if borrowed_after > book.borrow_limit:
            self.waiting[task.key] = (
                f"would borrow {borrowed_after} GPUs, over team {book.team.name}'s borrow "
                f"limit of {book.borrow_limit}"
            )
            return
        idle = self.free - self.reserved - reserved_idle
        if demand > idle:
            self.waiting[task.key] = (
                f"team {book.team.name} is at its guarantee ({book.guarantee} GPUs) and only "
                f"{max(0, idle)} idle GPUs can be borrowed, {demand} needed"
            )
            return
        self._admit_placed(task, book, demand, borrowing=True)

    # -- pass 3 ------------------------------------------------------------------------------

    def _priority_pass(self, waiting: list[Task]) -> None:
        for task in waiting:
            book = self.book_of[task.namespace]
            if not book.team.preempt_lower_priority or book.used > book.guarantee:
                continue  # a team beyond its own quota never preempts for priority
            demand = task.gpus
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
        room = self._room_for(task)
        if need_free <= 0 and need_quota <= 0 and (room is None or room.fits()):
            if inflight == 0:
                return False
            self.reserved += self._hold(room, demand - inflight, available)
            self._change_used(book, demand)
            self.waiting[task.key] = f"waiting for {inflight} GPUs being freed by preemption for it"
            return True
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

    def _room_for(self, task: Task) -> _Room | None:
        """A trial of the free GPUs per node, with those being freed for ``task`` already
        counted; None when capacity is a count (then only counts matter)."""
        if self.slots is None or self.nodes is None:
            return None
        room = _Room(self.slots, self.nodes, task.pod_gpus)
        for placement in self.leaving.get(task.key, ()):
            room.add(placement)
        return room

    def _could_free_on(self, book: _Book, *, own_allowed: bool) -> Mapping[str, int]:
        """GPUs per node of every task that could be a victim for a task of ``book``: the
        borrowed tasks of all teams, and the team's own when it may preempt them. More
        than the real candidates (taken ones, higher priorities), which is safe: it only
        rules out nodes that stay short even so."""
        if self._reclaimable_on is None:
            on: dict[str, int] = {}
            for victim in self._reclaim_list():
                _add_placement(on, victim.task.placement)
            self._reclaimable_on = on
        if not own_allowed:
            return self._reclaimable_on
        with_own = self._with_own_on.get(book.index)
        if with_own is None:
            with_own = dict(self._reclaimable_on)
            for member in book.members:
                _add_placement(with_own, member.placement)
            self._with_own_on[book.index] = with_own
        return with_own

    @staticmethod
    def _hold(room: _Room | None, short: int, available: int) -> int:
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
                    work_lost_gpu_s=target.work_at_risk(self.now),
                    reason=reason,
                )
            )

    def _choose_victims(
        self, task: Task, book: _Book, need_free: int, need_quota: int, room: _Room | None
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
        base = self.priorities.base(task)
        own_allowed = book.team.preempt_lower_priority and book.used <= book.guarantee
        if need_quota > 0 and not own_allowed:
            return None
        # Upper bounds (taken tasks still count) that give up early on the many attempts
        # that cannot succeed, before any victim is looked at. At least one victim is
        # needed: the caller asks only when what is free (or on its way) is not enough.
        own_bound = self._own_victims_of(book).gpus_below(base) if own_allowed else 0
        reclaim_bound = self.borrowed_total - book.borrowed
        if (
            need_quota > own_bound
            or need_free > reclaim_bound + own_bound
            or reclaim_bound + own_bound <= 0
        ):
            return None
        chosen: list[_Victim] = []
        left_free, left_quota = need_free, need_quota
        # Whether the pods fit, read only once the counts are met: placing is the dearer test.
        fitted = room is None or (left_free <= 0 and room.fits())
        if room is not None:
            room.rule_out(self._could_free_on(book, own_allowed=own_allowed))
        taken = self.taken
        preempted_by = task.preempted_by
        lowered: dict[int, int] = {}
        for victim in self._live_reclaim_victims():
            if left_free <= 0 and fitted:
                break
            lender_side = victim.book
            if lender_side is book or victim.key in taken:
                continue
            if victim.key == preempted_by:
                continue  # the task that preempted this one, still running: no ping-pong
            if left_free <= 0 and room is not None and not room.may_help(victim.task.placement):
                continue  # enough GPUs, only room is missing, and it is on no node of this one
            lowered_already = lowered.get(lender_side.index, 0)
            if lender_side.used - lowered_already <= lender_side.guarantee:
                continue  # that team is back within its guarantee: nothing more to reclaim
            lowered[lender_side.index] = lowered_already + victim.gpus
            chosen.append(victim)
            left_free -= victim.gpus
            if room is not None:
                room.add(victim.task.placement)
                fitted = left_free <= 0 and room.fits()
        if own_allowed and (left_free > 0 or left_quota > 0 or not fitted):
            for victim in self._live_own_victims(book):
                if left_free <= 0 and left_quota <= 0 and fitted:
                    break
                if victim.effective >= base:
                    break  # never an equal-or-higher priority task for priority reasons
                if victim.key in taken or victim.key == preempted_by:
                    continue
                if (
                    left_free <= 0
                    and left_quota <= 0
                    and room is not None
                    and not room.may_help(victim.task.placement)
                ):
                    continue
                chosen.append(victim)
                left_free -= victim.gpus
                left_quota -= victim.gpus
                if room is not None:
                    room.add(victim.task.placement)
                    fitted = left_free <= 0 and room.fits()
        if left_free > 0 or left_quota > 0 or not fitted:
            return None
        return _pruned(chosen, book, left_free, left_quota, room)

    def _live_reclaim_victims(self) -> Iterator[_Victim]:
        """Tasks running on borrowed GPUs, of every team, in victim order, from the first one
        still available (a shared head skips those taken or no longer reclaimable, so many
        preemptors in one round do not rescan them)."""
        victims = self._reclaim_list()
        head = self._reclaim_head
        while head < len(victims) and (
            victims[head].key in self.taken
            or victims[head].book.used <= victims[head].book.guarantee
        ):
            head += 1
        self._reclaim_head = head
        return islice(victims, head, None)

    def _reclaim_list(self) -> list[_Victim]:
        """Every team's borrowed tasks in victim order, built on first use."""
        if self._reclaimable is None:
            victims: list[_Victim] = []
            for book in self.books:
                if book.borrowed > 0:
                    victims.extend(self._borrowed_victims(book))
            victims.sort(key=_order_of)
            self._reclaimable = victims
        return self._reclaimable

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
                victims.extend(make(m, book, effective, borrowed=True) for m in members)
            elif filled + levels.gpus[effective] <= book.guarantee:
                filled += levels.gpus[effective]
            else:
                for member in sorted(members, key=_admitted_then_key):
                    filled += member.gpus
                    if filled > book.guarantee:
                        victims.append(make(member, book, effective, borrowed=True))
        return victims

    def _own_victims_of(self, book: _Book) -> _OwnVictims:
        own = self._own.get(book.index)
        if own is None:
            # Only a team within its guarantee preempts its own tasks: none of them counts as
            # borrowed, so the order is by priority first.
            own = _OwnVictims(self._levels_of(book), book, self.candidates)
            self._own[book.index] = own
        return own

    def _live_own_victims(self, book: _Book) -> Iterator[_Victim]:
        return self._own_victims_of(book).from_head(self.taken)


def _pruned(
    chosen: list[_Victim], book: _Book, left_free: int, left_quota: int, room: _Room | None
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


class _Room:
    """The free GPUs per node as they will be once some running tasks are gone, and
    whether a task's pods fit on them, as an overlay on the round's :class:`FreeGpus`
    (victims leave only after their grace, so their GPUs are never free to anyone else).

    A preemptor may try dozens of victims, so for pods of one size the overlay keeps the
    count of pod-sized slots up to date as victims come and go: each step is a few
    additions instead of a placement. Mixed sizes are placed for real and put back."""

    def __init__(self, slots: FreeGpus, nodes: Mapping[str, int], pods: Sequence[int]) -> None:
        self._slots = slots
        self._free_on = slots.free_on
        self._nodes = nodes
        self._pods = [gpus for gpus in pods if gpus > 0]
        self._leaving: dict[str, int] = {}
        """GPUs per node that will be free once the victims tried so far are gone."""
        size = self._pods[0] if self._pods else 0
        self._size = size if all(gpus == size for gpus in self._pods) else 0
        # Pod-sized slots now, plus what the leaving GPUs add (uniform pods only).
        self._slots_now = slots.slots_for(size) if self._size else 0
        self._slots_gained = 0
        self._smallest = min(self._pods, default=0)
        self._could_free_on: Mapping[str, int] = {}

    def rule_out(self, could_free_on: Mapping[str, int]) -> None:
        """Every running GPU that could be freed at all, per node (see :meth:`may_help`)."""
        self._could_free_on = could_free_on

    def may_help(self, placement: Mapping[str, int]) -> bool:
        """Whether freeing that task's GPUs could ever matter: some node of it could hold
        the smallest pod once every candidate there were gone. A task on nodes that never
        could is not worth trying: it would only be pruned again."""
        for node, gpus in placement.items():
            if gpus <= 0 or node not in self._nodes:
                continue
            could_free = (
                self._free_on(node) + self._leaving.get(node, 0) + self._could_free_on.get(node, 0)
            )
            if could_free >= self._smallest:
                return True
        return False

    def add(self, placement: Mapping[str, int]) -> None:
        """A task's GPUs that will be free (a node that is down frees nothing)."""
        self._shift(placement, 1)

    def remove(self, placement: Mapping[str, int]) -> None:
        self._shift(placement, -1)

    def _shift(self, placement: Mapping[str, int], sign: int) -> None:
        # Locals: a round shifts tens of thousands of placements.
        size, leaving, healthy, free_on = self._size, self._leaving, self._nodes, self._free_on
        gained = 0
        for node, gpus in placement.items():
            if gpus <= 0 or node not in healthy:
                continue
            before = leaving.get(node, 0)
            after = before + sign * gpus
            leaving[node] = after
            if size:
                free = free_on(node)
                gained += (free + after) // size - (free + before) // size
        self._slots_gained += gained

    def fits(self) -> bool:
        if not self._pods:
            return True
        if self._size:
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
        if placed is not None:
            self._slots.release(placed)
        self._slots.take(leaving)
        if placed is None:
            return 0
        held = {
            node: gpus - leaving.get(node, 0)
            for node, gpus in placed.items()
            if gpus > leaving.get(node, 0)
        }
        self._slots.take(held)
        return sum(held.values())

    def _leaving_now(self) -> dict[str, int]:
        return {node: gpus for node, gpus in self._leaving.items() if gpus > 0}


def _add_placement(total: dict[str, int], placement: Mapping[str, int]) -> None:
    for node, gpus in placement.items():
        total[node] = total.get(node, 0) + gpus


def _order_of(victim: _Victim) -> tuple[object, ...]:
    return victim.order


def _admitted_then_key(task: Task) -> tuple[float, str]:
    return (_admitted(task), task.key)


class _Levels:
    """A team's running tasks grouped by effective priority, with the GPUs of each level.

    Both victim orders are by priority first and a round has only a few distinct levels,
    so the work of ordering tasks is done only for the levels a round reaches."""

    def __init__(self, members: list[Task], priorities: _Priorities) -> None:
        self.tasks: dict[int, list[Task]] = {}
        self.gpus: dict[int, int] = {}
        for member in members:
            effective = priorities.effective(member)
            level = self.tasks.get(effective)
            if level is None:
                self.tasks[effective] = [member]
                self.gpus[effective] = member.gpus
            else:
                level.append(member)
                self.gpus[effective] += member.gpus
        self.ascending = sorted(self.tasks)


class _OwnVictims:
    """A team's tasks in victim order (lowest priority first), built a level at a time as
    preemptors reach it (a preemptor stops at its own class weight, so the levels above
    are usually never built), with a head past those taken and the GPUs below any priority
    for a quick bound."""

    def __init__(self, levels: _Levels, book: _Book, candidates: _Candidates) -> None:
        self.victims: list[_Victim] = []
        self.head = 0
        self._levels = levels
        self._book = book
        self._candidates = candidates
        self._built = 0
        self._cumulative = list(
            accumulate((levels.gpus[level] for level in levels.ascending), initial=0)
        )

    def gpus_below(self, priority: int) -> int:
        """GPUs of the team's tasks below ``priority``, taken ones included."""
        return self._cumulative[bisect.bisect_left(self._levels.ascending, priority)]

    def from_head(self, taken: set[str]) -> Iterator[_Victim]:
        """The victims in order from the first one not taken, building levels on demand."""
        victims = self.victims
        while self.head < len(victims) and victims[self.head].key in taken:
            self.head += 1
        index = self.head
        while index < len(victims) or self._build_next_level():
            yield victims[index]
            index += 1

    def _build_next_level(self) -> bool:
        ascending = self._levels.ascending
        if self._built == len(ascending):
            return False
        level = ascending[self._built]
        make, book = self._candidates.victim, self._book
        victims = [make(task, book, level, borrowed=False) for task in self._levels.tasks[level]]
        victims.sort(key=_order_of)
        self.victims.extend(victims)
        self._built += 1
        return True
