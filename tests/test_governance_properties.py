"""Properties of the engine over random clusters, policies and queues (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.governance import (
    Capacity,
    Decisions,
    GovernanceState,
    Policy,
    PreemptCause,
    Task,
    TaskState,
    decide,
    effective_priority,
    scaled_guarantees,
)
from tests.governance_world import CLASSES, policy, team

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
