"""The governance rules as plainly as they can be written, for the equivalence test.

Slow on purpose: no running totals, no candidate lists kept across preemptors, no slot
counting, no short cuts. Every "do the pods fit" is a fresh best-fit placement; every
victim search walks every candidate in victim order; every team's borrowed tasks are worked
out again for every preemptor. It implements docs/policy.md ("How the engine applies the
policy" and "Preemption") and the engine must decide exactly as it does; it knows nothing
of the reservation for tasks that waited too long (the test leaves that off).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.governance import (
    AdmissionOrder,
    Decisions,
    GovernanceState,
    IdleComputeAllocation,
    Lending,
    Policy,
    RequeueCause,
    Task,
    TaskState,
    VictimOrder,
    effective_priority,
    scaled_guarantees,
)
from coordinator.governance.fairshare import fair_share_key
from coordinator.governance.placement import FreeGpus


@dataclass(frozen=True)
class Outcome:
    """What the engine's Decisions say, less the reasons' wording."""

    admit: list[tuple[str, int, int, tuple[tuple[str, int], ...] | None]]
    preempt: list[tuple[str, str, str, int, float]]
    waiting: list[str]
    stopped_at: str | None = None


@dataclass
class _Team:
    index: int
    namespace: str
    guarantee: int
    borrow_limit: int
    lending: Lending
    weight: int
    preempts_own: bool
    used: int = 0
    members: list[Task] = field(default_factory=list)

    @property
    def borrowed(self) -> int:
        return max(0, self.used - self.guarantee)


def reference_decide(state: GovernanceState, policy: Policy, now: float) -> Outcome:
    return _Reference(state, policy, now).run()


class _Reference:
    def __init__(self, state: GovernanceState, policy: Policy, now: float) -> None:
        self.policy, self.now = policy, now
        capacity = state.capacity
        self.per_node = capacity.by_node is not None
        healthy = sum(capacity.by_node.values()) if capacity.by_node else capacity.healthy_gpus
        shares = scaled_guarantees([t.quota.gpus for t in policy.teams], healthy)
        self.teams = [
            _Team(
                i,
                t.namespace,
                share,
                t.borrow_limit_gpus,
                t.lending,
                t.fair_share_weight,
                t.preempt_lower_priority,
            )
            for i, (t, share) in enumerate(zip(policy.teams, shares, strict=True))
        ]
        self.team_of = {team.namespace: team for team in self.teams}
        self.admits: list[tuple[str, int, int, tuple[tuple[str, int], ...] | None]] = []
        self.preempts: list[tuple[str, str, str, int, float]] = []
        self.waiting: set[str] = set()
        self.stopped_at: str | None = None
        self.taken: set[str] = set()
        self.inflight: dict[str, int] = {}
        self.claimed: dict[str, int] = {}
        self.leaving: dict[str, list[Mapping[str, int]]] = {}
        self.queue: list[Task] = []
        self.reserved = 0
        held, unplaced = 0, 0
        used_on: dict[str, int] = {}
        for task in state.tasks.values():
            if task.state.holding:
                held += task.gpus
                if not task.placement:
                    unplaced += task.gpus
                for node, gpus in task.placement.items():
                    used_on[node] = used_on.get(node, 0) + gpus
                if task.state is TaskState.PREEMPTED:
                    if task.preempted_by is not None:
                        self.inflight[task.preempted_by] = (
                            self.inflight.get(task.preempted_by, 0) + task.gpus
                        )
                        if self.per_node and task.placement:
                            self.leaving.setdefault(task.preempted_by, []).append(task.placement)
                elif task.namespace in self.team_of:
                    self.team_of[task.namespace].used += task.gpus
                    self.team_of[task.namespace].members.append(task)
            elif task.state.waiting:
                self._enqueue(task)
                released = task.requeue_cause is RequeueCause.PREEMPTION
                if task.preempted_by is not None and released and not task.claim_spent:
                    self.claimed[task.preempted_by] = (
                        self.claimed.get(task.preempted_by, 0) + task.gpus
                    )
        if capacity.by_node is not None:
            self.nodes: dict[str, int] = dict(capacity.by_node)
            self.free_on = {n: max(0, g - used_on.get(n, 0)) for n, g in self.nodes.items()}
            self.free = sum(self.free_on.values()) - unplaced
        else:
            self.nodes, self.free_on = {}, {}
            self.free = healthy - held

    def _enqueue(self, task: Task) -> None:
        backing_off = task.backoff_until is not None and task.backoff_until > self.now
        if task.namespace not in self.team_of or not task.complete or backing_off:
            self.waiting.add(task.key)
        else:
            self.queue.append(task)

    def eff(self, task: Task) -> int:
        return effective_priority(task, self.policy)

    def base(self, task: Task) -> int:
        return self.policy.weight_of(task.priority_class)

    def run(self) -> Outcome:
        if self.policy.admission is AdmissionOrder.TASK_RANKING:
            self.queue.sort(key=lambda t: (-self.eff(t), t.queued_at, t.key))
        else:
            self.queue.sort(key=lambda t: (t.queued_at, t.key))
        precommitted = self._precommit()
        try:
            self._passes(precommitted)
        except _Stopped as stop:  # the round's victims are chosen: the rest waits
            self.stopped_at = stop.key
        admitted = {key for key, *_ in self.admits}
        for task in self.queue:
            if task.key not in admitted:
                self.waiting.add(task.key)
        return Outcome(self.admits, self.preempts, sorted(self.waiting), self.stopped_at)

    def _passes(self, precommitted: dict[str, int]) -> None:
        beyond: list[Task] = []
        for task in self.queue:
            team = self.team_of[task.namespace]
            if task.key in precommitted:
                self.reserved -= precommitted.pop(task.key)
                team.used -= task.gpus
            if task.gpus == 0:
                self._admit(task, team)
            elif team.used + task.gpus > team.guarantee:
                beyond.append(task)
            elif task.gpus <= self.free - self.reserved:
                if not self._admit(task, team):
                    self._preempt_for(task, team)
            else:
                self._preempt_for(task, team)
        still = self._borrowing(beyond)
        for task in still:
            team = self.team_of[task.namespace]
            may = team.preempts_own and team.used <= team.guarantee
            if may and team.used + task.gpus > team.guarantee:
                self._preempt_for(task, team)

    def _precommit(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for task in self.queue:
            if task.key not in self.inflight and task.key not in self.claimed:
                continue
            team = self.team_of[task.namespace]
            if team.used + task.gpus > team.guarantee:
                continue
            team.used += task.gpus
            short = max(0, task.gpus - self.inflight.get(task.key, 0))
            hold = min(self.claimed.get(task.key, 0), short, max(0, self.free - self.reserved))
            self.reserved += hold
            held[task.key] = hold
        return held

    def _borrowing(self, beyond: list[Task]) -> list[Task]:
        kept_idle = sum(
            max(0, t.guarantee - t.used) for t in self.teams if t.lending is Lending.DONT_LEND
        )
        borrowers = [
            t
            for t in beyond
            if self.team_of[t.namespace].lending.borrows
            and self.team_of[t.namespace].borrow_limit > 0
        ]
        pending = list(borrowers)
        while pending:
            if self.policy.idle_compute is IdleComputeAllocation.FAIR_SHARE:
                least = min(
                    {self.team_of[t.namespace].index for t in pending},
                    key=lambda i: fair_share_key(self.teams[i].borrowed, self.teams[i].weight, i),
                )
                task = next(t for t in pending if self.team_of[t.namespace].index == least)
            else:
                task = pending[0]
            pending.remove(task)
            team = self.team_of[task.namespace]
            if team.used + task.gpus - team.guarantee > team.borrow_limit:
                continue
            if task.gpus > self.free - self.reserved - kept_idle:
                continue
            self._admit(task, team)
        admitted = {key for key, *_ in self.admits}
        return [t for t in beyond if t.key not in admitted]

    def _admit(self, task: Task, team: _Team) -> bool:
        nodes = None
        if self.per_node:
            placed = FreeGpus(self.free_on).place(task.pod_gpus)
            if placed is None:
                return False
            for node, gpus in placed.items():
                self.free_on[node] -= gpus
            nodes = tuple(sorted(placed.items()))
        borrowed = max(0, team.used + task.gpus - team.guarantee) - team.borrowed
        team.used += task.gpus
        self.free -= task.gpus
        self.admits.append((task.key, task.gpus, borrowed, nodes))
        return True

    # -- preemption -----------------------------------------------------------------------------

    def _fits(self, task: Task, leaving: Mapping[str, int]) -> bool:
        free = dict(self.free_on)
        for node, gpus in leaving.items():
            if node in self.nodes:
                free[node] = free.get(node, 0) + gpus
        return FreeGpus(free).fits(task.pod_gpus)

    def _leaving_of(self, task: Task, victims: list[Task]) -> dict[str, int]:
        leaving: dict[str, int] = {}
        for placement in [*self.leaving.get(task.key, []), *(v.placement for v in victims)]:
            for node, gpus in placement.items():
                leaving[node] = leaving.get(node, 0) + gpus
        return leaving

    def _preempt_for(self, task: Task, team: _Team) -> bool:
        inflight = self.inflight.get(task.key, 0)
        available = max(0, self.free - self.reserved)
        need_free = task.gpus - available - inflight
        need_quota = team.used + task.gpus - team.guarantee
        if (
            need_free <= 0
            and need_quota <= 0
            and (not self.per_node or self._fits(task, self._leaving_of(task, [])))
        ):
            if inflight == 0:
                return False
            self._hold(task, [], task.gpus - inflight, available)
            team.used += task.gpus
            return True
        if not self._bounds(task, team, need_free, need_quota):
            return False
        if len(self.preempts) >= self.policy.preemption.max_victims_per_round:
            raise _Stopped(task.key)
        victims = self._choose(task, team, need_free, need_quota)
        if victims is None:
            return False
        freed = sum(v.gpus for v in victims)
        self._hold(task, victims, task.gpus - inflight - freed, available)
        for victim in victims:
            lender = self.team_of[victim.namespace]
            own = lender is team
            self.taken.add(victim.key)
            lender.used -= victim.gpus
            asked = victim.checkpoint_grace_s
            grace = self.policy.preemption.default_grace_seconds if asked is None else asked
            cause = "priority" if own else "reclaim"
            capped = min(grace, self.policy.preemption.max_grace_seconds)
            self.preempts.append((victim.key, task.key, cause, victim.gpus, capped))
        team.used += task.gpus
        return True

    def _hold(self, task: Task, victims: list[Task], short: int, available: int) -> None:
        if not self.per_node:
            self.reserved += max(0, min(available, short))
            return
        leaving = self._leaving_of(task, victims)
        free = dict(self.free_on)
        for node, gpus in leaving.items():
            if node in self.nodes:
                free[node] = free.get(node, 0) + gpus
        placed = FreeGpus(free).place(task.pod_gpus)
        if placed is None:
            return
        for node, gpus in placed.items():
            from_free = max(0, gpus - (leaving.get(node, 0) if node in self.nodes else 0))
            self.free_on[node] -= from_free
            self.reserved += from_free

    def _bounds(self, task: Task, team: _Team, need_free: int, need_quota: int) -> bool:
        own_allowed = team.preempts_own and team.used <= team.guarantee
        if need_quota > 0 and not own_allowed:
            return False
        base = self.base(task)
        own_bound = sum(m.gpus for m in team.members if self.eff(m) < base) if own_allowed else 0
        reclaim_bound = sum(t.borrowed for t in self.teams) - team.borrowed
        return not (
            need_quota > own_bound
            or need_free > reclaim_bound + own_bound
            or reclaim_bound + own_bound <= 0
        )

    def _order_key(self, task: Task) -> tuple[float, ...]:
        admitted = _admitted(task)
        if self.policy.preemption.victim_order is VictimOrder.CHECKPOINT_AWARE:
            return (self.eff(task), task.work_at_risk(self.now), -admitted)
        return (self.eff(task), -admitted)

    def _borrowed_tasks(self) -> list[Task]:
        """Every team's tasks past its guarantee, filled highest effective priority first."""
        found: list[Task] = []
        for team in self.teams:
            if team.borrowed <= 0:
                continue
            filled = 0
            for member in sorted(
                team.members,
                key=lambda m: (-self.eff(m), _admitted(m), m.key),
            ):
                filled += member.gpus
                if filled > team.guarantee:
                    found.append(member)
        return sorted(found, key=lambda t: (*self._order_key(t), t.key))

    def _choose(
        self, task: Task, team: _Team, need_free: int, need_quota: int
    ) -> list[Task] | None:
        chosen: list[Task] = []
        lowered: dict[str, int] = {}
        left = [need_free, need_quota]

        def fitted() -> bool:
            return left[0] <= 0 and (
                not self.per_node or self._fits(task, self._leaving_of(task, chosen))
            )

        def take(victim: Task, *, own: bool) -> None:
            chosen.append(victim)
            left[0] -= victim.gpus
            if own:
                left[1] -= victim.gpus
            else:
                lowered[victim.namespace] = lowered.get(victim.namespace, 0) + victim.gpus

        def reclaimable(victim: Task, caps: Mapping[str, int]) -> bool:
            lender = self.team_of[victim.namespace]
            return (
                lender is not team
                and victim.key not in self.taken
                and victim.key != task.preempted_by
                and lender.used - caps.get(victim.namespace, 0) > lender.guarantee
            )

        def complete() -> bool:
            return left[0] <= 0 and left[1] <= 0 and fitted()

        # reclaim: the count, then the room, with who is beyond its guarantee settled
        borrowed = [b for b in self._borrowed_tasks() if b.key not in self.taken]
        resume = None
        for index, victim in enumerate(borrowed):
            if left[0] <= 0:
                resume = index
                break
            if reclaimable(victim, lowered):
                take(victim, own=False)
        if resume is not None and self.per_node and not fitted():
            settled = dict(lowered)
            for victim in borrowed[resume:]:
                if fitted():
                    break
                if reclaimable(victim, settled):
                    take(victim, own=False)
        # the team's own lower-priority tasks
        if team.preempts_own and team.used <= team.guarantee and not complete():
            base = self.base(task)
            own = sorted(
                (m for m in team.members if m.key not in self.taken),
                key=lambda m: (*self._order_key(m), m.key),
            )
            resume = None
            for index, victim in enumerate(own):
                if left[0] <= 0 and left[1] <= 0:
                    resume = index
                    break
                if self.eff(victim) >= base:
                    return None
                if victim.key != task.preempted_by:
                    take(victim, own=True)
            if resume is not None and self.per_node and not fitted():
                for victim in own[resume:]:
                    if fitted() or self.eff(victim) >= base:
                        break
                    if victim.key != task.preempted_by:
                        take(victim, own=True)
        if not complete():
            return None
        return self._pruned(task, team, chosen, left[0], left[1])

    def _pruned(
        self, task: Task, team: _Team, chosen: list[Task], left_free: int, left_quota: int
    ) -> list[Task] | None:
        kept = list(chosen)
        for victim in reversed(chosen):
            own = self.team_of[victim.namespace] is team
            without = [v for v in kept if v is not victim]
            if (
                left_free + victim.gpus <= 0
                and (not own or left_quota + victim.gpus <= 0)
                and (not self.per_node or self._fits(task, self._leaving_of(task, without)))
            ):
                kept = without
                left_free += victim.gpus
                if own:
                    left_quota += victim.gpus
        # each lender stays beyond its guarantee for all but its last victim
        for lender in self.teams:
            if lender is team:
                continue
            mine = [v for v in kept if v.namespace == lender.namespace]
            if mine and sum(v.gpus for v in mine) - mine[-1].gpus >= lender.borrowed:
                return None
        return kept


class _Stopped(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _admitted(task: Task) -> float:
    return task.admitted_at if task.admitted_at is not None else task.queued_at


def outcome_of(decisions: Decisions) -> Outcome:
    """The engine's Decisions in the reference's terms."""
    return Outcome(
        [(a.task, a.gpus, a.borrowed, a.nodes) for a in decisions.admit],
        [(p.victim, p.preemptor, str(p.cause), p.gpus, p.grace_s) for p in decisions.preempt],
        sorted(decisions.waiting),
        decisions.stopped_at,
    )
