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

Pending tasks that do not fit are skipped and smaller ones behind them may go (best effort,
as Kueue's BestEffortFIFO); a task preempted often ages upward (see ``effective_priority``).

Cost: one round over 10,000 tasks must stay well under 50 ms (bench/governance_decision.py).
What keeps it there: policy look-ups resolved once per round, not per task; preemption
candidates built one priority level at a time, only as far as preemptors reach; running
totals and shared heads instead of rescans; and no reference cycles, so a round's objects
are freed as it ends instead of waiting for the cyclic garbage collector.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator
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
from coordinator.governance.tasks import GovernanceState, Task, TaskState

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
    """GPUs of its admitted and running tasks (preempted ones are leaving)."""
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
                else:
                    book = book_of.get(task.namespace)
                    if book is not None:
                        book.used += gpus
                        book.members.append(task)
            elif task_state in _WAITING:
                self._enqueue(task)
        # Every team's borrowed GPUs added up, kept current by _change_used.
        self.borrowed_total = sum(book.borrowed for book in self.books)

        self.slots: FreeGpus | None
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
            beyond = self._guaranteed_pass()
            still_waiting = self._borrowing_pass(beyond)
            self._priority_pass(still_waiting)
        return Decisions(tuple(self.admits), tuple(self.preempts), self.waiting)

    # -- pass 1 ------------------------------------------------------------------------------

    def _guaranteed_pass(self) -> list[Task]:
        beyond: list[Task] = []
        book_of = self.book_of
        for task in self.queue:
            book = book_of[task.namespace]
            demand = task.gpus
            if demand == 0:
                self._admit_placed(task, book, demand, borrowing=False)
            elif book.used + demand > book.guarantee:
                beyond.append(task)
            elif demand <= self.free - self.reserved:
                self._admit_placed(task, book, demand, borrowing=False)
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

    def _admit_placed(self, task: Task, book: _Book, demand: int, *, borrowing: bool) -> None:
        """Admit ``task`` if its pods can be placed (always, when capacity is a count)."""
        nodes: tuple[tuple[str, int], ...] | None = None
        if self.slots is not None:
            placed = self.slots.place(task.pod_gpus)
            if placed is None:
                self.waiting[task.key] = (
                    f"{demand} GPUs are free but no node placement fits the gang's pods "
                    f"{list(task.pod_gpus)}"
                )
                return
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

    # -- preemption --------------------------------------------------------------------------

    def _preempt_for(self, task: Task, book: _Book, demand: int) -> bool:
        """Preempt what ``task`` needs, or see that it is already on its way. True when the
        task now waits on preemption (the free GPUs it counts on are reserved for it)."""
        inflight = self.inflight.get(task.key, 0)
        available = max(0, self.free - self.reserved)
        need_free = demand - available - inflight
        need_quota = book.used + demand - book.guarantee
        if need_free <= 0 and need_quota <= 0:
            if inflight == 0:
                return False
            self.reserved += min(available, demand - inflight)
            self.waiting[task.key] = f"waiting for {inflight} GPUs being freed by preemption for it"
            return True
        victims = self._choose_victims(task, book, need_free, need_quota)
        if victims is None:
            return False
        freed = sum(victim.gpus for victim in victims)
        self.reserved += min(available, max(0, demand - inflight - freed))
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
        self.waiting[task.key] = f"preempting {len(victims)} task(s) to free {freed} GPUs for it"
        return True

    def _choose_victims(
        self, task: Task, book: _Book, need_free: int, need_quota: int
    ) -> list[_Victim] | None:
        """The fewest victims, in DESIGN.md's order, that free ``need_free`` GPUs and bring
        the team within its guarantee (``need_quota``): greedy in order, then pruned from
        the end of anything not needed. None when no such set exists.

        Borrowed tasks of other teams come first (reclaim), then the team's own
        lower-priority tasks, which only a team with preemptLowerPriority that is not beyond
        its own quota may touch (so the team has no borrowed tasks of its own)."""
        base = self.priorities.base(task)
        own_allowed = book.team.preempt_lower_priority and book.used <= book.guarantee
        if need_quota > 0 and not own_allowed:
            return None
        # Upper bounds (taken tasks still count) that give up early on the many attempts
        # that cannot succeed, before any victim is looked at.
        own_bound = self._own_victims_of(book).gpus_below(base) if own_allowed else 0
        reclaim_bound = self.borrowed_total - book.borrowed
        if need_quota > own_bound or need_free > reclaim_bound + own_bound:
            return None
        chosen: list[_Victim] = []
        left_free, left_quota = need_free, need_quota
        taken = self.taken
        preempted_by = task.preempted_by
        lowered: dict[int, int] = {}
        for victim in self._live_reclaim_victims():
            if left_free <= 0:
                break
            lender_side = victim.book
            if lender_side is book or victim.key in taken:
                continue
            if victim.key == preempted_by:
                continue  # the task that preempted this one, still running: no ping-pong
            lowered_already = lowered.get(lender_side.index, 0)
            if lender_side.used - lowered_already <= lender_side.guarantee:
                continue  # that team is back within its guarantee: nothing more to reclaim
            lowered[lender_side.index] = lowered_already + victim.gpus
            chosen.append(victim)
            left_free -= victim.gpus
        if own_allowed and (left_free > 0 or left_quota > 0):
            for victim in self._live_own_victims(book):
                if left_free <= 0 and left_quota <= 0:
                    break
                if victim.effective >= base:
                    break  # never an equal-or-higher priority task for priority reasons
                if victim.key in taken or victim.key == preempted_by:
                    continue
                chosen.append(victim)
                left_free -= victim.gpus
                left_quota -= victim.gpus
        if left_free > 0 or left_quota > 0:
            return None
        return _pruned(chosen, book, left_free, left_quota)

    def _live_reclaim_victims(self) -> Iterator[_Victim]:
        """Tasks running on borrowed GPUs, of every team, in victim order, from the first one
        still available (a shared head skips those taken or no longer reclaimable, so many
        preemptors in one round do not rescan them)."""
        if self._reclaimable is None:
            victims: list[_Victim] = []
            for book in self.books:
                if book.borrowed > 0:
                    victims.extend(self._borrowed_victims(book))
            victims.sort(key=_order_of)
            self._reclaimable = victims
        victims = self._reclaimable
        head = self._reclaim_head
        while head < len(victims) and (
            victims[head].key in self.taken
            or victims[head].book.used <= victims[head].book.guarantee
        ):
            head += 1
        self._reclaim_head = head
        return islice(victims, head, None)

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


def _pruned(chosen: list[_Victim], book: _Book, left_free: int, left_quota: int) -> list[_Victim]:
    """``chosen`` less the victims, latest first, whose GPUs are not needed after all
    (``left_free`` and ``left_quota`` are at or below zero: what the set frees beyond need)."""
    kept: list[_Victim] = []
    for victim in reversed(chosen):
        gpus = victim.gpus
        own = victim.book is book
        if left_free + gpus <= 0 and (not own or left_quota + gpus <= 0):
            left_free += gpus
            if own:
                left_quota += gpus
        else:
            kept.append(victim)
    kept.reverse()
    return kept


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
