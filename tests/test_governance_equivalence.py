"""The engine decides exactly as the plain statement of the rules (tests/governance_reference.py)
on random clusters: full ones, fragmented ones, gangs of one and of several pod sizes, victims
on several nodes, preemptions in flight and GPUs owed to their preemptors, and rounds that
stop at their victim budget."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.governance import (
    Capacity,
    GovernanceState,
    Policy,
    RequeueCause,
    Task,
    TaskState,
    decide,
    preemption,
)
from coordinator.governance.policy import ReservationSettings
from tests.governance_reference import outcome_of, reference_decide
from tests.governance_world import CLASSES, policy, team
from tests.test_governance_properties import NOW, Case, cases

SHAPES = [(1,), (2,), (4,), (8,), (8, 8), (4, 4, 4), (8, 1), (8, 2), (4, 2, 2), (8, 4, 2), (0, 8)]
ODD_SHAPES = [(3,), (3, 2), (6, 3), (5, 1)]


@st.composite
def clusters(draw: st.DrawFn) -> Case:
    """Up to 16 nodes, most of them full; a few teams, each lending, borrowing or waiting."""
    count = draw(st.integers(2, 4))
    sizes = st.sampled_from([4, 8, 8, 8])
    nodes = {f"n{i:02d}": draw(sizes) for i in range(draw(st.integers(2, 16)))}
    total = sum(nodes.values())
    teams = [
        team(
            f"t{i}",
            draw(st.integers(0, total // 2)),
            lending=draw(st.sampled_from(["lend-and-borrow", "lend", "dont-lend"])),
            limit=draw(st.integers(1, 500)),
            weight=draw(st.integers(0, 100)),
            preempt=draw(st.booleans()),
        )
        for i in range(count)
    ]
    extra: dict[str, Any] = {
        "preemption": {
            "victimOrder": draw(st.sampled_from(["checkpoint-aware", "priority-then-recent"])),
            "agingBoostPerPreemption": 5,
            "agingMaxBoost": 20,
            # small budgets stop rounds part way (see test_governance_victim_budget.py)
            "maxVictimsPerRound": draw(st.sampled_from([1, 2, 3, 5, 1000])),
        }
    }
    chosen = policy(
        *teams,
        admission=draw(st.sampled_from(["task-ranking", "first-come-first-serve"])),
        idle=draw(st.sampled_from(["fair-share", "first-come-first-serve"])),
        **extra,
    )
    state = GovernanceState(Capacity.of_nodes(nodes))
    rng = random.Random(draw(st.integers(0, 2**32)))
    shapes = SHAPES + (ODD_SHAPES if draw(st.booleans()) else [])
    free = dict(nodes)
    keys: list[str] = []
    for index in range(draw(st.integers(4, 70))):
        shape = rng.choice(shapes)
        task = Task(
            f"t{rng.randrange(count)}",
            f"k{index}",
            shape,
            queued_at=rng.uniform(0, NOW),
            priority_class=rng.choice([*CLASSES, None]),
            size=len(shape),
        )
        task.times_preempted = rng.choice([0, 0, 1, 4])
        task.checkpoint_grace_s = rng.choice([None, None, 5.0, 9000.0])
        if rng.random() < 0.65 and _place(task, free, rng):
            task.state = rng.choice(
                [TaskState.RUNNING, TaskState.RUNNING, TaskState.ADMITTED, TaskState.PREEMPTED]
            )
            task.admitted_at = rng.uniform(0, NOW)
            if task.state is TaskState.RUNNING:
                task.started_at = task.admitted_at
                if rng.random() < 0.5:
                    task.last_checkpoint = rng.uniform(task.started_at, NOW)
            if keys and rng.random() < (0.9 if task.state is TaskState.PREEMPTED else 0.1):
                task.preempted_by = rng.choice(keys)
        elif keys and rng.random() < 0.25:
            task.state = TaskState.REQUEUED
            task.preempted_by = rng.choice(keys)
            task.requeue_cause = RequeueCause.PREEMPTION
            task.claim_spent = rng.random() < 0.3
        elif keys and rng.random() < 0.1:
            task.preempted_by = rng.choice(keys)
        state.add(task)
        keys.append(task.key)
    return Case(chosen, state)


def _place(task: Task, free: dict[str, int], rng: random.Random) -> bool:
    """Scatters the pods on nodes at random, as a busy scheduler leaves them."""
    placement: dict[str, int] = {}
    for gpus in task.pod_gpus:
        if gpus == 0:
            continue
        fitting = [node for node in sorted(free) if free[node] >= gpus]
        if not fitting:
            for node, taken in placement.items():
                free[node] += taken
            return False
        node = rng.choice(fitting)
        free[node] -= gpus
        placement[node] = placement.get(node, 0) + gpus
    task.placement = placement
    return True


def same(case: Case) -> None:
    """The reference leaves out the reservation for tasks that waited too long (its own
    tests cover it): so does the policy here."""
    rules = case.policy.model_copy(
        update={"reservation": ReservationSettings(after_wait_seconds=None)}
    )
    assert outcome_of(decide(case.state, rules, NOW)) == reference_decide(case.state, rules, NOW)


@pytest.fixture(params=["walks first", "reads slot events"])
def search(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine looks for room by walking candidates, or straight from slot events (which
    the small clusters here would seldom reach): both must give the rule's answer."""
    if request.param == "reads slot events":
        monkeypatch.setattr(preemption, "SHORT_WALK", 0)


SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(clusters())
def test_the_engine_decides_as_the_rules_read_on_busy_fragmented_clusters(
    search: None, case: Case
) -> None:
    same(case)


@SETTINGS
@given(cases())
def test_the_engine_decides_as_the_rules_read_on_small_random_states(
    search: None, case: Case
) -> None:
    same(case)


def test_the_reference_is_not_the_engine_under_another_name() -> None:
    """A case where the victim search must make room on nodes, so both sides do real work."""
    world: Policy = policy(team("a", 8), team("b", 8))
    state = GovernanceState(Capacity.of_nodes({"n1": 8, "n2": 8}))
    for index, node in enumerate(["n1", "n1", "n2", "n2"]):
        running = Task("b", f"b{index}", (4,), queued_at=0)
        running.state, running.placement, running.admitted_at = TaskState.RUNNING, {node: 4}, index
        state.add(running)
    state.add(Task("a", "whole", (8,), queued_at=1))
    outcome = reference_decide(state, world, NOW)
    # b0 and b1, admitted first, fill b's guarantee: b2 and b3 run on borrowed GPUs
    assert [victim for victim, *_ in outcome.preempt] == ["b/b3", "b/b2"]
    assert outcome == outcome_of(decide(state, world, NOW))
