"""Admission: quotas, guarantees, borrowing, fair share, order, gangs, placement."""

from __future__ import annotations

from coordinator.governance import Capacity, Decisions, TaskState
from tests.governance_world import World, admitted, policy, team


def test_a_task_within_its_teams_quota_is_admitted() -> None:
    world = World(gpus=16)
    world.pending("a", "t", 8)
    decisions = world.decide(policy(team("a", 16)))
    assert admitted(decisions) == ["a/t"]
    assert decisions.admit[0].borrowed == 0


def test_admission_carries_a_reason_naming_the_team_and_its_guarantee() -> None:
    world = World(gpus=16)
    world.pending("a", "t", 8)
    [admit] = world.decide(policy(team("a", 16))).admit
    assert admit.reason == "admitted within team a's guarantee: 8 of 16 GPUs"


def test_a_gang_is_not_admitted_until_all_its_pods_are_known() -> None:
    world = World(gpus=32)
    world.pending("a", "gang", 16, size=4, pods=3)
    decisions = world.decide(policy(team("a", 32)))
    assert admitted(decisions) == []
    assert "all 4 pods" in decisions.waiting["a/gang"]


def test_a_gang_larger_than_the_free_gpus_is_not_admitted_in_part() -> None:
    world = World(gpus=16)
    world.running("a", "busy", 10)
    world.pending("a", "gang", 8, size=4)
    assert admitted(world.decide(policy(team("a", 16, limit=1)))) == []


def test_task_ranking_admits_the_higher_priority_task_first() -> None:
    world = World(gpus=8)
    world.pending("a", "early-low", 8, "low", at=1)
    world.pending("a", "late-high", 8, "high", at=2)
    assert admitted(world.decide(policy(team("a", 8)))) == ["a/late-high"]


def test_task_ranking_breaks_priority_ties_by_arrival() -> None:
    world = World(gpus=8)
    world.pending("a", "second", 8, "mid", at=2)
    world.pending("a", "first", 8, "mid", at=1)
    assert admitted(world.decide(policy(team("a", 8)))) == ["a/first"]


def test_first_come_first_serve_ignores_priority() -> None:
    world = World(gpus=8)
    world.pending("a", "early-low", 8, "low", at=1)
    world.pending("a", "late-high", 8, "high", at=2)
    chosen = admitted(world.decide(policy(team("a", 8), admission="first-come-first-serve")))
    assert chosen == ["a/early-low"]


def test_a_requeued_task_keeps_its_place_in_the_queue() -> None:
    world = World(gpus=8)
    world.pending("a", "newcomer", 8, at=50)
    back = world.pending("a", "requeued", 8, at=10)
    back.state = TaskState.REQUEUED
    back.requeue_count = 1
    assert admitted(world.decide(policy(team("a", 8)))) == ["a/requeued"]


def test_a_task_in_backoff_is_not_admitted() -> None:
    world = World(gpus=8)
    task = world.pending("a", "t", 8)
    task.state, task.backoff_until = TaskState.REQUEUED, 2000.0
    decisions = world.decide(policy(team("a", 8)), now=1000)
    assert admitted(decisions) == []
    assert "backing off" in decisions.waiting["a/t"]


def test_a_task_whose_backoff_has_ended_is_admitted() -> None:
    world = World(gpus=8)
    task = world.pending("a", "t", 8)
    task.state, task.backoff_until = TaskState.REQUEUED, 900.0
    assert admitted(world.decide(policy(team("a", 8)), now=1000)) == ["a/t"]


def test_a_task_of_a_namespace_outside_the_policy_waits_with_a_reason() -> None:
    world = World(gpus=8)
    world.pending("stranger", "t", 1)
    decisions = world.decide(policy(team("a", 8)))
    assert admitted(decisions) == []
    assert "belongs to no team" in decisions.waiting["stranger/t"]


def test_a_team_beyond_its_quota_borrows_idle_gpus_of_a_lending_team() -> None:
    world = World(gpus=16)
    world.running("a", "mine", 8)
    world.pending("a", "more", 4)
    decisions = world.decide(policy(team("a", 8, limit=100), team("b", 8, lending="lend")))
    assert admitted(decisions) == ["a/more"]
    assert decisions.admit[0].borrowed == 4


def test_borrowing_stops_at_the_borrow_limit() -> None:
    world = World(gpus=32)
    world.running("a", "mine", 8)
    world.pending("a", "more", 6)
    decisions = world.decide(policy(team("a", 8, limit=50), team("b", 24, lending="lend")))
    assert admitted(decisions) == []
    assert "over team a's borrow limit of 4" in decisions.waiting["a/more"]


def test_the_idle_quota_of_a_dont_lend_team_is_not_borrowed() -> None:
    world = World(gpus=16)
    world.running("a", "mine", 8)
    world.pending("a", "more", 2)
    decisions = world.decide(policy(team("a", 8), team("b", 8, lending="dont-lend")))
    assert admitted(decisions) == []


def test_a_lend_only_team_does_not_borrow() -> None:
    world = World(gpus=16)
    world.running("a", "mine", 8)
    world.pending("a", "more", 2)
    decisions = world.decide(policy(team("a", 8, lending="lend"), team("b", 8)))
    assert admitted(decisions) == []
    assert "cannot borrow (lending: lend)" in decisions.waiting["a/more"]


def test_gpus_no_team_owns_can_be_borrowed() -> None:
    world = World(gpus=24)
    world.running("a", "mine", 8)
    world.pending("a", "more", 8)
    assert admitted(world.decide(policy(team("a", 8), team("b", 8, lending="dont-lend")))) == [
        "a/more"
    ]


def borrowed_by_team(decisions: Decisions) -> dict[str, int]:
    totals: dict[str, int] = {}
    for admit in decisions.admit:
        totals[admit.team] = totals.get(admit.team, 0) + admit.borrowed
    return totals


def test_fair_share_splits_idle_gpus_by_weight() -> None:
    world = World(gpus=12)
    for n in range(10):
        world.pending("a", f"a{n}", 1, at=n)
        world.pending("b", f"b{n}", 1, at=n)
    decisions = world.decide(
        policy(
            team("a", 2, limit=500, weight=75),
            team("b", 2, limit=500, weight=25),
            team("c", 8, lending="lend"),
            idle="fair-share",
        )
    )
    assert borrowed_by_team(decisions) == {"a": 6, "b": 2}


def test_fair_share_serves_weightless_teams_after_weighted_ones() -> None:
    world = World(gpus=6)
    for n in range(6):
        world.pending("zero", f"z{n}", 1, at=0)
        world.pending("some", f"s{n}", 1, at=1)
    decisions = world.decide(
        policy(
            team("zero", 1, limit=500, weight=0),
            team("some", 1, limit=500, weight=1),
            team("c", 4, lending="lend"),
        )
    )
    assert borrowed_by_team(decisions) == {"zero": 0, "some": 4}


def test_first_come_first_serve_idle_compute_goes_in_queue_order() -> None:
    world = World(gpus=6)
    for n in range(6):
        world.pending("a", f"a{n}", 1, at=n)
        world.pending("b", f"b{n}", 1, at=100 + n)
    decisions = world.decide(
        policy(
            team("a", 1, limit=500, weight=1),
            team("b", 1, limit=500, weight=100),
            team("c", 4, lending="lend"),
            idle="first-come-first-serve",
        )
    )
    assert borrowed_by_team(decisions) == {"a": 4, "b": 0}


def test_guaranteed_tasks_go_before_borrowers_whatever_their_priority() -> None:
    world = World(gpus=16)
    world.running("a", "mine", 8)
    world.pending("a", "borrower", 8, "critical", at=0)
    world.pending("b", "owner", 8, "low", at=5)
    assert admitted(world.decide(policy(team("a", 8), team("b", 8)))) == ["b/owner"]


def test_guarantees_shrink_in_proportion_when_healthy_capacity_falls_short() -> None:
    world = World(gpus=12)  # quotas add up to 16: guarantees become 9 and 3
    world.pending("a", "t", 10)
    decisions = world.decide(policy(team("a", 12, lending="dont-lend"), team("b", 4)))
    assert admitted(decisions) == []
    assert "cannot borrow" in decisions.waiting["a/t"]


def test_a_task_that_fits_the_scaled_guarantee_is_admitted() -> None:
    world = World(gpus=12)
    world.pending("a", "t", 9)
    assert admitted(world.decide(policy(team("a", 12, lending="dont-lend"), team("b", 4)))) == [
        "a/t"
    ]


def test_a_big_task_that_does_not_fit_lets_a_smaller_one_behind_it_go() -> None:
    world = World(gpus=8)
    world.running("a", "busy", 4)
    world.pending("a", "big", 8, at=1)
    world.pending("a", "small", 4, at=2)
    assert admitted(world.decide(policy(team("a", 8, limit=1)))) == ["a/small"]


def test_gpus_of_a_task_still_being_preempted_are_not_free() -> None:
    world = World(gpus=8)
    leaving = world.running("a", "leaving", 8)
    leaving.state = TaskState.PREEMPTED
    leaving.preempted_by = "a/someone"
    world.pending("a", "t", 8)
    assert admitted(world.decide(policy(team("a", 8)))) == []


def test_a_task_asking_for_no_gpus_is_admitted_on_a_full_cluster() -> None:
    world = World(gpus=8)
    world.running("a", "busy", 8)
    world.pending("a", "launcher", 0)
    assert admitted(world.decide(policy(team("a", 8)))) == ["a/launcher"]


def test_with_capacity_per_node_the_admission_names_the_nodes() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("a", "busy", 6, nodes={"n1": 6})
    world.pending("a", "gang", 8, size=4)
    [admit] = world.decide(policy(team("a", 16))).admit
    assert admit.nodes == (("n1", 2), ("n2", 6))


def test_with_capacity_per_node_a_gang_that_no_placement_fits_waits() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("a", "x", 4, nodes={"n1": 4})
    world.running("a", "y", 4, nodes={"n2": 4})
    world.pending("a", "wide", 8, size=1)  # 8 free GPUs, but 4 on each node
    decisions = world.decide(policy(team("a", 16)))
    assert admitted(decisions) == []
    assert "no node placement fits" in decisions.waiting["a/wide"]


def test_tasks_on_nodes_outside_the_healthy_capacity_do_not_use_it() -> None:
    world = World(nodes={"n1": 8})
    world.running("a", "on-dead-node", 8, nodes={"n9": 8})
    world.pending("b", "t", 8)
    world.state.capacity = Capacity.of_nodes({"n1": 8})
    assert admitted(world.decide(policy(team("a", 8), team("b", 8)))) == ["b/t"]


def test_a_task_asking_for_no_gpus_is_admitted_for_a_team_beyond_its_quota() -> None:
    world = World(gpus=16)
    world.running("a", "borrowing", 16)
    world.pending("a", "launcher", 0)
    assert admitted(world.decide(policy(team("a", 8, limit=1), team("b", 8)))) == ["a/launcher"]
