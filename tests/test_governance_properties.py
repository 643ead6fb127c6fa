"""Properties of the engine over random clusters, policies and queues (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinator.governance import (
    Capacity,
    Decisions,
    FreeGpus,
    GovernanceState,
    Lending,
    Policy,
    PreemptCause,
    RequeueCause,
    Task,
    TaskState,
    decide,
    effective_priority,
    scaled_guarantees,
)
from tests.governance_world import CLASSES, World, policy, team

NOW = 10_000.0
NODES = [f"n{i}" for i in range(6)]


@dataclass
class Case:
    policy: Policy
    state: GovernanceState


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    count = draw(st.integers(1, 4))
    teams = [
        team(
            f"t{i}",
            draw(st.integers(0, 24)),
            lending=draw(st.sampled_from(["lend-and-borrow", "lend", "dont-lend"])),
            limit=draw(st.integers(1, 500)),
            weight=draw(st.integers(0, 100)),
            preempt=draw(st.booleans()),
        )
        for i in range(count)
    ]
    boost = draw(st.integers(0, 40))
    return policy(
        *teams,
        admission=draw(st.sampled_from(["task-ranking", "first-come-first-serve"])),
        idle=draw(st.sampled_from(["fair-share", "first-come-first-serve"])),
        preemption={
            "agingBoostPerPreemption": boost,
            "agingMaxBoost": boost + draw(st.integers(0, 40)),
            "victimOrder": draw(st.sampled_from(["checkpoint-aware", "priority-then-recent"])),
        },
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    chosen = draw(policies())
    per_node = draw(st.booleans())
    node_gpus = {node: draw(st.integers(0, 8)) for node in NODES}
    capacity = (
        Capacity.of_nodes(node_gpus) if per_node else Capacity.of_count(sum(node_gpus.values()))
    )
    state = GovernanceState(capacity)
    namespaces = [t.namespace for t in chosen.teams] + ["stranger"]
    free = dict(node_gpus)
    keys: list[str] = []
    for index in range(draw(st.integers(0, 24))):
        namespace = draw(st.sampled_from(namespaces))
        size = draw(st.integers(1, 3))
        per_pod = draw(st.integers(0, 8))
        kind = draw(st.sampled_from(["pending", "requeued", "running", "admitted", "preempted"]))
        known = size if kind != "pending" else draw(st.integers(1, size))
        task = Task(
            namespace,
            f"task{index}",
            (per_pod,) * known,
            queued_at=draw(st.floats(0, NOW)),
            priority_class=draw(st.sampled_from([*CLASSES, None])),
            size=size,
        )
        task.times_preempted = draw(st.integers(0, 4))
        if keys and draw(st.booleans()) is True:
            task.preempted_by = draw(st.sampled_from(keys))
        if kind in ("running", "admitted", "preempted"):
            placement = _place(free, task.pod_gpus) if per_node else {}
            if placement is None:
                kind = "pending"
            else:
                task.placement = placement
                task.admitted_at = draw(st.floats(0, NOW))
                task.state = {
                    "running": TaskState.RUNNING,
                    "admitted": TaskState.ADMITTED,
                    "preempted": TaskState.PREEMPTED,
                }[kind]
                if kind == "running":
                    task.started_at = task.admitted_at
                    if draw(st.booleans()):
                        task.last_checkpoint = draw(st.floats(task.started_at, NOW))
        if kind == "requeued":
            task.state = TaskState.REQUEUED
            task.backoff_until = draw(st.none() | st.floats(0, 2 * NOW))
            if task.preempted_by is not None and draw(st.booleans()):
                # a released victim: its GPUs went back to the free ones, for its preemptor
                task.requeue_cause = RequeueCause.PREEMPTION
        state.add(task)
        keys.append(task.key)
    return Case(chosen, state)


def _place(free: dict[str, int], pods: tuple[int, ...]) -> dict[str, int] | None:
    placement: dict[str, int] = {}
    for gpus in pods:
        if gpus == 0:
            continue
        node = next((n for n in NODES if free[n] >= gpus), None)
        if node is None:
            return None
        free[node] -= gpus
        placement[node] = placement.get(node, 0) + gpus
    return placement


def team_used(case: Case) -> dict[str, int]:
    used = {t.namespace: 0 for t in case.policy.teams}
    for task in case.state.tasks.values():
        if task.state in (TaskState.ADMITTED, TaskState.RUNNING) and task.namespace in used:
            used[task.namespace] += task.gpus
    return used


def guarantees(case: Case) -> dict[str, int]:
    shares = scaled_guarantees(
        [t.quota.gpus for t in case.policy.teams], case.state.capacity.healthy_gpus
    )
    return {t.namespace: share for t, share in zip(case.policy.teams, shares, strict=True)}


def physically_free(case: Case) -> int:
    held = sum(task.gpus for task in case.state.tasks.values() if task.state.holding)
    return case.state.capacity.healthy_gpus - held


def reclaim_for_several_tasks() -> Case:
    """Team a (guaranteed 4, holding none) waits with four 2-GPU tasks while team b
    (guaranteed 2) runs four 2-GPU tasks on all 8 GPUs: reclaiming for each of a's tasks in
    turn would free 6 GPUs for a guarantee of 4."""
    world = World(gpus=8)
    for index in range(4):
        world.running("b", f"b{index}", 2, admitted=index)
        world.pending("a", f"a{index}", 2, at=10 + index)
    return Case(policy(team("a", 4), team("b", 2)), world.state)


def surplus_being_freed() -> Case:
    """A 2-GPU task waits for a 6-GPU victim to leave, and nothing else is free."""
    world = World(gpus=8)
    leaving = world.running("b", "big", 6, admitted=0)
    leaving.state, leaving.preempted_by = TaskState.PREEMPTED, "a/first"
    world.running("b", "small", 2, admitted=1)
    world.pending("a", "first", 2, at=10)
    world.pending("a", "second", 2, at=11)
    return Case(policy(team("a", 4), team("b", 4)), world.state)


def run(case: Case) -> Decisions:
    return decide(case.state, case.policy, NOW)


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cases())
def test_no_team_is_admitted_beyond_its_quota_plus_borrow_limit(case: Case) -> None:
    decisions = run(case)
    used = team_used(case)
    for preempt in decisions.preempt:
        namespace = case.state.tasks[preempt.victim].namespace
        if namespace in used:
            used[namespace] -= preempt.gpus
    for admit in decisions.admit:
        used[case.state.tasks[admit.task].namespace] += admit.gpus
    admitted_teams = {case.state.tasks[a.task].namespace for a in decisions.admit if a.gpus}
    for t in case.policy.teams:
        if t.namespace in admitted_teams:
            assert used[t.namespace] <= t.quota.gpus + t.borrow_limit_gpus


@SETTINGS
@given(cases())
@example(surplus_being_freed())
def test_total_admitted_never_exceeds_the_free_healthy_capacity(case: Case) -> None:
    admitted = sum(admit.gpus for admit in run(case).admit)
    assert admitted <= max(0, physically_free(case))


@SETTINGS
@given(cases())
def test_a_lower_priority_task_never_preempts_a_higher_one(case: Case) -> None:
    weights = case.policy.class_weights()
    for preempt in run(case).preempt:
        if preempt.cause is PreemptCause.PRIORITY:
            preemptor = case.state.tasks[preempt.preemptor]
            victim = case.state.tasks[preempt.victim]
            assert preemptor.namespace == victim.namespace
            preemptor_weight = weights.get(preemptor.priority_class or "", 0)
            assert preemptor_weight > effective_priority(victim, case.policy)


@SETTINGS
@given(cases())
def test_reclaim_only_takes_from_teams_holding_more_than_their_guarantee(case: Case) -> None:
    used, guaranteed = team_used(case), guarantees(case)
    for preempt in run(case).preempt:
        if preempt.cause is PreemptCause.RECLAIM:
            victim = case.state.tasks[preempt.victim]
            assert victim.namespace != case.state.tasks[preempt.preemptor].namespace
            assert used[victim.namespace] > guaranteed[victim.namespace]


@SETTINGS
@given(cases())
def test_a_preempted_task_never_preempts_its_preemptor_while_it_runs(case: Case) -> None:
    for preempt in run(case).preempt:
        assert case.state.tasks[preempt.preemptor].preempted_by != preempt.victim


@SETTINGS
@given(cases())
def test_victims_are_distinct_running_tasks_and_preemptors_wait(case: Case) -> None:
    decisions = run(case)
    chosen = [preempt.victim for preempt in decisions.preempt]
    assert len(chosen) == len(set(chosen))
    admitted = {admit.task for admit in decisions.admit}
    for preempt in decisions.preempt:
        assert case.state.tasks[preempt.victim].state in (TaskState.ADMITTED, TaskState.RUNNING)
        assert case.state.tasks[preempt.preemptor].state.waiting
        assert preempt.preemptor not in admitted


@SETTINGS
@given(cases())
def test_gangs_are_admitted_whole_or_not_at_all(case: Case) -> None:
    for admit in run(case).admit:
        task = case.state.tasks[admit.task]
        assert task.complete
        assert admit.gpus == task.gpus
        if admit.nodes is not None:
            assert sum(gpus for _, gpus in admit.nodes) == task.gpus


@SETTINGS
@given(cases())
def test_only_waiting_tasks_out_of_backoff_are_admitted(case: Case) -> None:
    for admit in run(case).admit:
        task = case.state.tasks[admit.task]
        assert task.state.waiting
        assert task.backoff_until is None or task.backoff_until <= NOW


@SETTINGS
@given(cases())
def test_decisions_are_the_same_for_the_same_input(case: Case) -> None:
    assert run(case) == run(case)


@SETTINGS
@given(cases())
def test_decisions_do_not_depend_on_the_order_tasks_were_added(case: Case) -> None:
    reordered = GovernanceState(case.state.capacity)
    for key in reversed(list(case.state.tasks)):
        reordered.add(case.state.tasks[key])
    assert decide(reordered, case.policy, NOW) == run(case)


@SETTINGS
@given(cases())
def test_deciding_changes_nothing_in_the_state(case: Case) -> None:
    before = {key: repr(task) for key, task in case.state.tasks.items()}
    run(case)
    assert {key: repr(task) for key, task in case.state.tasks.items()} == before


@SETTINGS
@given(cases())
def test_every_waiting_task_not_admitted_has_a_reason(case: Case) -> None:
    decisions = run(case)
    admitted = {admit.task for admit in decisions.admit}
    for key, task in case.state.tasks.items():
        if task.state.waiting and key not in admitted:
            assert decisions.waiting.get(key)


@dataclass
class TeamRound:
    """One team's GPUs after a round, in the engine's own terms."""

    held: int = 0
    """GPUs of its admitted and running tasks, less those preempted this round."""
    admitted: int = 0
    """GPUs it was admitted this round."""
    admitted_within: int = 0
    """Of those, the GPUs within its guarantee (``Admit.gpus - Admit.borrowed``)."""
    awaited: int = 0
    """The demand of its tasks that preempted this round: they wait for those GPUs."""
    acted: bool = False
    """It was admitted GPUs or preempted this round."""

    @property
    def total(self) -> int:
        return self.held + self.admitted + self.awaited


def after_round(case: Case, decisions: Decisions) -> dict[str, TeamRound]:
    tasks = case.state.tasks
    used = team_used(case)
    teams = {t.namespace: TeamRound(held=used[t.namespace]) for t in case.policy.teams}
    for preempt in decisions.preempt:
        victim = teams.get(tasks[preempt.victim].namespace)
        if victim is not None:
            victim.held -= preempt.gpus
    for preemptor in {preempt.preemptor for preempt in decisions.preempt}:
        team_round = teams[tasks[preemptor].namespace]
        team_round.awaited += tasks[preemptor].gpus
        team_round.acted = True
    for admit in decisions.admit:
        team_round = teams[tasks[admit.task].namespace]
        team_round.admitted += admit.gpus
        team_round.admitted_within += admit.gpus - admit.borrowed
        team_round.acted = team_round.acted or admit.gpus > 0
    return teams


@SETTINGS
@given(cases())
@example(reclaim_for_several_tasks())
def test_a_team_waits_on_preemption_for_no_more_than_its_guarantee(case: Case) -> None:
    """Preemption only ever serves a guarantee: a team that preempted ends the round with
    what it holds, what it waits for and what it was admitted within its guarantee all
    inside that guarantee. (Its tasks admitted by borrowing idle GPUs come on top.)"""
    decisions = run(case)
    guaranteed = guarantees(case)
    for namespace, team_round in after_round(case, decisions).items():
        if team_round.awaited:
            within = team_round.held + team_round.awaited + team_round.admitted_within
            assert within <= guaranteed[namespace]


@SETTINGS
@given(cases())
def test_a_team_that_acts_ends_the_round_within_its_entitlement(case: Case) -> None:
    """Held plus admitted plus awaited by preemption never passes the guarantee plus the
    borrow limit (for a team that borrows), once the team was admitted GPUs or preempted."""
    teams, guaranteed = after_round(case, run(case)), guarantees(case)
    for t in case.policy.teams:
        team_round = teams[t.namespace]
        borrows = t.lending is Lending.LEND_AND_BORROW
        entitlement = guaranteed[t.namespace] + (t.borrow_limit_gpus if borrows else 0)
        if team_round.acted:
            assert team_round.total <= entitlement


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(NODES), st.integers(0, 8)),
    st.lists(st.integers(0, 8), min_size=1, max_size=4),
)
def test_free_gpus_fit_a_gang_exactly_when_it_can_be_placed(
    free: dict[str, int], pods: list[int]
) -> None:
    slots = FreeGpus(free)
    fits = slots.fits(pods)
    assert [slots.free_on(node) for node in NODES] == [free.get(node, 0) for node in NODES]
    assert fits == (FreeGpus(free).place(pods) is not None)
