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
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate

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

    @property
    def borrowed(self) -> int:
        return max(0, self.used - self.guarantee)

    @property
    def idle(self) -> int:
        return max(0, self.guarantee - self.used)


@dataclass(frozen=True, slots=True, eq=False)
class _Victim:
    order: tuple[object, ...]
    task: Task
    book: _Book
    effective: int
    borrowed: bool


class _Round:
    def __init__(self, state: GovernanceState, policy: Policy, now: float) -> None:
        self.policy = policy
        self.now = now
        self.weights = policy.class_weights()
        self.admits: list[Admit] = []
        self.preempts: list[Preempt] = []
        self.waiting: dict[str, str] = {}
        self.taken: set[str] = set()
        self.reserved = 0
        self._effective: dict[str, int] = {}
        self._reclaimable: list[_Victim] | None = None
        self._reclaim_head = 0
        self._own: dict[int, _OwnVictims] = {}

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
        for task in state.tasks.values():
            task_state = task.state
            if task_state.holding:
                gpus = task.gpus
                held_total += gpus
                if task.placement:
                    for node, count in task.placement.items():
                        used_on_node[node] = used_on_node.get(node, 0) + count
                else:
                    held_unplaced += gpus
                if task_state is TaskState.PREEMPTED:
                    if task.preempted_by is not None:
                        self.inflight[task.preempted_by] = (
                            self.inflight.get(task.preempted_by, 0) + gpus
                        )
                else:
                    book = self.book_of.get(task.namespace)
                    if book is not None:
                        book.used += gpus
                        book.members.append(task)
            elif task_state.waiting:
                self._enqueue(task)

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

    def effective(self, task: Task) -> int:
        value = self._effective.get(task.key)
        if value is None:
            value = effective_priority(task, self.policy, self.weights)
            self._effective[task.key] = value
        return value

    def run(self) -> Decisions:
        if self.queue:
            if self.policy.admission is AdmissionOrder.TASK_RANKING:
                self.queue.sort(key=lambda t: (-self.effective(t), t.queued_at, t.key))
            else:
                self.queue.sort(key=lambda t: (t.queued_at, t.key))
            beyond = self._guaranteed_pass()
            still_waiting = self._borrowing_pass(beyond)
            self._priority_pass(still_waiting)
        return Decisions(tuple(self.admits), tuple(self.preempts), self.waiting)

    # -- pass 1 ------------------------------------------------------------------------------

    def _guaranteed_pass(self) -> list[Task]:
        beyond: list[Task] = []
        for task in self.queue:
            book = self.book_of[task.namespace]
            demand = task.gpus
            if demand == 0:
                self._admit_placed(task, book, demand, borrowing=False)
            elif book.used + demand > book.guarantee:
                beyond.append(task)
            elif self._count_fits(demand):
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
            if book.team.lending.borrows and book.borrow_limit > 0:
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
            yield pending.popleft()
            if pending:
                heapq.heappush(heap, self._share_key(index))

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
            if book.used + task.gpus > book.guarantee:
                self._preempt_for(task, book, task.gpus)

    # -- admission ---------------------------------------------------------------------------

    def _count_fits(self, demand: int) -> bool:
        return demand == 0 or demand <= self.free - self.reserved

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
        book.used += demand
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
        freed = sum(victim.task.gpus for victim in victims)
        self.reserved += min(available, max(0, demand - inflight - freed))
        base = _weight(task, self.policy, self.weights)
        grace_default = self.policy.preemption.default_grace_seconds
        for victim in victims:
            target = victim.task
            self.taken.add(target.key)
            victim.book.used -= target.gpus
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
                    gpus=target.gpus,
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
        base = _weight(task, self.policy, self.weights)
        own_allowed = book.team.preempt_lower_priority and book.used <= book.guarantee
        if need_quota > 0 and not own_allowed:
            return None
        own_bound = self._own_lower_gpus(book, base) if own_allowed else 0
        reclaim_bound = sum(other.borrowed for other in self.books if other is not book)
        if need_quota > own_bound or need_free > reclaim_bound + own_bound:
            return None
        chosen: list[_Victim] = []
        left_free, left_quota = need_free, need_quota
        lowered: dict[int, int] = {}
        for victim in self._live_reclaim_victims():
            if left_free <= 0:
                break
            lender_side = victim.book
            if lender_side is book or victim.task.key in self.taken:
                continue
            if victim.task.key == task.preempted_by:
                continue  # the task that preempted this one, still running: no ping-pong
            if lender_side.used - lowered.get(lender_side.index, 0) <= lender_side.guarantee:
                continue  # that team is back within its guarantee: nothing more to reclaim
            lowered[lender_side.index] = lowered.get(lender_side.index, 0) + victim.task.gpus
            chosen.append(victim)
            left_free -= victim.task.gpus
        if own_allowed and (left_free > 0 or left_quota > 0):
            for victim in self._live_own_victims(book):
                if left_free <= 0 and left_quota <= 0:
                    break
                if victim.effective >= base:
                    break  # never an equal-or-higher priority task for priority reasons
                if victim.task.key in self.taken or victim.task.key == task.preempted_by:
                    continue
                chosen.append(victim)
                left_free -= victim.task.gpus
                left_quota -= victim.task.gpus
        if left_free > 0 or left_quota > 0:
            return None
        for victim in reversed(list(chosen)):
            gpus = victim.task.gpus
            own = victim.book is book
            if left_free + gpus <= 0 and (not own or left_quota + gpus <= 0):
                chosen.remove(victim)
                left_free += gpus
                if own:
                    left_quota += gpus
        return chosen

    def _victim_order(self, task: Task, borrowed: bool, effective: int) -> tuple[object, ...]:
        admitted = task.admitted_at if task.admitted_at is not None else task.queued_at
        if self.policy.preemption.victim_order is VictimOrder.PRIORITY_THEN_RECENT:
            return (not borrowed, effective, -admitted, task.key)
        return (not borrowed, effective, task.work_at_risk(self.now), -admitted, task.key)

    def _live_reclaim_victims(self) -> Iterator[_Victim]:
        """Tasks running on borrowed GPUs, of every team, in victim order, from the first one
        still available (a shared head skips those taken or no longer reclaimable, so many
        preemptors in one round do not rescan them)."""
        if self._reclaimable is None:
            victims: list[_Victim] = []
            for book in self.books:
                if book.borrowed > 0:
                    victims.extend(v for v in self._classified(book) if v.borrowed)
            victims.sort(key=_order_of)
            self._reclaimable = victims
        victims = self._reclaimable
        head = self._reclaim_head
        while head < len(victims) and (
            victims[head].task.key in self.taken
            or victims[head].book.used <= victims[head].book.guarantee
        ):
            head += 1
        self._reclaim_head = head
        return (victims[index] for index in range(head, len(victims)))

    def _own_victims_of(self, book: _Book) -> _OwnVictims:
        own = self._own.get(book.index)
        if own is None:
            # Only a team within its guarantee preempts its own tasks: none of them counts as
            # borrowed, so the order is by priority first and the bound below can bisect it.
            victims = sorted(self._classified(book, own_team=True), key=_order_of)
            own = _OwnVictims(victims)
            self._own[book.index] = own
        return own

    def _live_own_victims(self, book: _Book) -> Iterator[_Victim]:
        own = self._own_victims_of(book)
        victims = own.victims
        while own.head < len(victims) and victims[own.head].task.key in self.taken:
            own.head += 1
        return (victims[index] for index in range(own.head, len(victims)))

    def _own_lower_gpus(self, book: _Book, base: int) -> int:
        """GPUs of the team's tasks below priority ``base`` (an upper bound: some may be
        taken already), to give up early on a preemption that cannot succeed."""
        own = self._own_victims_of(book)
        return own.gpus_below(base)

    def _classified(self, book: _Book, *, own_team: bool = False) -> list[_Victim]:
        """The team's tasks fill its guarantee highest priority first (then oldest); those
        past it run on borrowed GPUs (never, for ``own_team``: see ``_own_victims_of``)."""
        ranked = sorted(
            book.members,
            key=lambda t: (
                -self.effective(t),
                t.admitted_at if t.admitted_at is not None else t.queued_at,
                t.key,
            ),
        )
        victims: list[_Victim] = []
        filled = 0
        for member in ranked:
            filled += member.gpus
            borrowed = filled > book.guarantee and not own_team
            effective = self.effective(member)
            order = self._victim_order(member, borrowed, effective)
            victims.append(_Victim(order, member, book, effective, borrowed))
        return victims


def _order_of(victim: _Victim) -> tuple[object, ...]:
    return victim.order


class _OwnVictims:
    """A team's tasks in victim order (lowest priority first) with a head past those taken,
    and cumulative GPUs by priority for a quick bound."""

    def __init__(self, victims: list[_Victim]) -> None:
        self.victims = victims
        self.head = 0
        self._effective = [victim.effective for victim in victims]
        self._cumulative = list(accumulate((victim.task.gpus for victim in victims), initial=0))

    def gpus_below(self, priority: int) -> int:
        return self._cumulative[bisect.bisect_left(self._effective, priority)]
