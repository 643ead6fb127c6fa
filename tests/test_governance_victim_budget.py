"""A round chooses at most ``preemption.maxVictimsPerRound`` victims: it stops at the next
task that would look for more, and the rounds after go on where it stopped."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.governance import Policy, PolicyError, TaskState
from tests.governance_world import World, admitted, policy, team


def budget_policy(budget: int | None, **extra: Any) -> Policy:
    """Team a (quota 4) borrows four of team b's GPUs; b owns 8."""
    preemption = {} if budget is None else {"maxVictimsPerRound": budget}
    return policy(team("a", 4), team("b", 8), preemption=preemption, **extra)


def borrowed_world(reclaimers: int = 4, gpus_each: int = 1) -> World:
    """a runs 4 GPUs of its own and 4 borrowed 1-GPU tasks, the cluster full; b waits with
    ``reclaimers`` tasks of ``gpus_each`` GPUs, queued in order r0, r1, ..."""
    world = World(gpus=12)
    world.running("a", "own", 4, admitted=1)
    for index in range(4):
        world.running("a", f"borrowed-{index}", 1, admitted=10 + index)
    world.running("b", "base", 4, admitted=2)
    for index in range(reclaimers):
        world.pending("b", f"r{index}", gpus_each, at=100 + index)
    return world


def test_the_default_budget_is_a_thousand_victims() -> None:
    assert budget_policy(None).preemption.max_victims_per_round == 1000


def test_a_round_looks_for_no_more_victims_once_it_has_chosen_its_budget() -> None:
    decisions = borrowed_world().decide(budget_policy(2))
    assert [p.preemptor for p in decisions.preempt] == ["b/r0", "b/r1"]
    assert decisions.stopped_at == "b/r2"


def test_a_round_within_its_budget_goes_through_the_whole_queue() -> None:
    decisions = borrowed_world().decide(budget_policy(4))
    assert len(decisions.preempt) == 4
    assert decisions.stopped_at is None


def test_the_preemptor_that_crosses_the_budget_gets_its_whole_set() -> None:
    decisions = borrowed_world(reclaimers=2, gpus_each=2).decide(budget_policy(1))
    assert [p.preemptor for p in decisions.preempt] == ["b/r0", "b/r0"]
    assert decisions.stopped_at == "b/r1"


def test_the_task_it_stopped_at_says_why_and_where_the_next_round_goes_on() -> None:
    decisions = borrowed_world().decide(budget_policy(2))
    words = decisions.waiting["b/r2"]
    assert "not looked at for preemption in this round" in words
    assert "maxVictimsPerRound: 2" in words


def test_tasks_after_the_stop_wait_even_when_free_gpus_would_take_them() -> None:
    """Those GPUs may be what the stopped preemptor counts on: a task admitted there would
    only be preempted again once the next round reaches it."""
    world = World(nodes={"n1": 8, "n2": 8, "n3": 8, "n4": 8})
    world.running("a", "own", 8, admitted=1, nodes={"n1": 8})
    for index in range(16):
        node = "n2" if index < 8 else "n3"
        world.running("a", f"borrowed-{index}", 1, admitted=10 + index, nodes={node: 1})
    world.running("b", "base", 2, admitted=2, nodes={"n4": 2})
    world.pending("b", "r0", 8, at=100)
    world.pending("b", "r1", 8, at=101)
    world.pending("c", "small", 1, at=102)
    rules = policy(
        team("a", 8), team("b", 18), team("c", 2), preemption={"maxVictimsPerRound": 1}
    )
    decisions = world.decide(rules)
    assert {p.preemptor for p in decisions.preempt} == {"b/r0"}
    assert decisions.stopped_at == "b/r1"
    assert admitted(decisions) == []
    assert decisions.waiting["c/small"].startswith("decided in the next round")
    unbounded = policy(team("a", 8), team("b", 18), team("c", 2))
    assert admitted(world.decide(unbounded)) == ["c/small"]  # the free GPUs would take it


def test_the_rounds_after_choose_the_victims_one_round_without_a_budget_would() -> None:
    unbounded = borrowed_world().decide(budget_policy(None))
    world = borrowed_world()
    chosen: list[tuple[str, str]] = []
    for round_number in range(1, 10):
        decisions = world.decide(budget_policy(1), now=1000.0 + round_number)
        world.state.apply_all(decisions, 1000.0 + round_number)
        chosen += [(p.victim, p.preemptor) for p in decisions.preempt]
        if decisions.stopped_at is None:
            break
    assert round_number == 4
    assert chosen == [(p.victim, p.preemptor) for p in unbounded.preempt]
    assert all(world.state.task(victim).state is TaskState.PREEMPTED for victim, _ in chosen)


@pytest.mark.parametrize("value", [0, -1, "many"])
def test_a_budget_that_is_not_a_positive_count_is_refused_naming_the_field(
    value: object,
) -> None:
    with pytest.raises(PolicyError, match="maxVictimsPerRound"):
        budget_policy(value)  # type: ignore[arg-type]
