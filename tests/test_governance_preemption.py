"""Preemption: lenders reclaiming, priority within a team, victim order, and the guards
(no ping-pong, no priority inversion, nothing beyond a team's own quota), aging; GPUs a
preemptor waits for counting as its team's, room on nodes, and freed GPUs handed over."""

from __future__ import annotations

from coordinator.governance import (
    Policy,
    PreemptCause,
    RequeueCause,
    TaskState,
    effective_priority,
)
from tests.governance_world import World, admitted, policy, team, victims


def reclaim_world() -> World:
    """Team a (quota 8) borrows 8 of team b's GPUs; b now wants 8 of its own."""
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=10)
    world.running("a", "borrowing", 8, admitted=20)
    world.pending("b", "owner", 8, at=30)
    return world


def test_a_lender_reclaims_its_gpus_from_the_borrower() -> None:
    decisions = reclaim_world().decide(policy(team("a", 8), team("b", 8)))
    [preempt] = decisions.preempt
    assert (preempt.victim, preempt.preemptor, preempt.cause) == (
        "a/borrowing",
        "b/owner",
        PreemptCause.RECLAIM,
    )
    assert "reclaims" in preempt.reason and "borrowed by team a" in preempt.reason


def test_the_preemptor_waits_for_the_gpus_instead_of_being_admitted_at_once() -> None:
    decisions = reclaim_world().decide(policy(team("a", 8), team("b", 8)))
    assert admitted(decisions) == []
    assert "preempting 1 task(s)" in decisions.waiting["b/owner"]


def test_reclaim_takes_the_tasks_beyond_the_borrowers_guarantee_by_its_own_ranking() -> None:
    world = World(gpus=16)
    world.running("a", "important", 8, "high", admitted=20)
    world.running("a", "minor", 8, "low", admitted=10)
    world.pending("b", "owner", 8)
    assert victims(world.decide(policy(team("a", 8), team("b", 8)))) == ["a/minor"]


def test_reclaim_ignores_the_borrowers_priority() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, "critical", admitted=1)
    world.running("a", "borrowing", 8, "critical", admitted=2)
    world.pending("b", "owner", 8, "low")
    assert victims(world.decide(policy(team("a", 8), team("b", 8)))) == ["a/borrowing"]


def test_borrowed_tasks_are_victims_before_lower_priority_own_tasks() -> None:
    world = World(gpus=16)
    world.running("b", "own-low", 4, "low", admitted=1)
    world.running("a", "own", 8, "mid", admitted=1)
    world.running("a", "borrowing", 4, "mid", admitted=2)
    world.pending("b", "urgent", 4, "high")
    decisions = world.decide(policy(team("a", 8), team("b", 8, preempt=True)))
    assert victims(decisions) == ["a/borrowing"]


def test_among_borrowed_tasks_the_lower_priority_goes_first() -> None:
    world = World(gpus=20)
    world.running("a", "own", 8, "mid", admitted=1)
    world.running("a", "borrowed-mid", 4, "mid", admitted=2)
    world.running("a", "borrowed-low", 4, "low", admitted=3)
    world.running("b", "own", 4, "mid", admitted=1)
    world.pending("b", "owner", 4)
    decisions = world.decide(policy(team("a", 8), team("b", 12)))
    assert victims(decisions) == ["a/borrowed-low"]


def test_among_equal_priority_the_least_work_lost_goes_first() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0, started=0)
    world.running("a", "stale", 4, admitted=100, started=100, checkpoint=200)
    world.running("a", "fresh", 4, admitted=50, started=50, checkpoint=950)
    world.pending("b", "owner", 4)
    decisions = world.decide(policy(team("a", 8), team("b", 8)), now=1000)
    assert victims(decisions) == ["a/fresh"]
    assert decisions.preempt[0].work_lost_gpu_s == 4 * 50


def test_without_a_checkpoint_work_lost_counts_from_the_start() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0, started=0)
    world.running("a", "long-running", 4, admitted=10, started=10)
    world.running("a", "just-started", 4, admitted=900, started=900)
    world.pending("b", "owner", 4)
    decisions = world.decide(policy(team("a", 8), team("b", 8)), now=1000)
    assert victims(decisions) == ["a/just-started"]


def test_equal_work_lost_falls_back_to_the_most_recently_admitted() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0, started=0)
    world.running("a", "older", 4, admitted=10, started=500)
    world.running("a", "newer", 4, admitted=20, started=500)
    world.pending("b", "owner", 4)
    decisions = world.decide(policy(team("a", 8), team("b", 8)), now=1000)
    assert victims(decisions) == ["a/newer"]


def test_kueues_order_takes_the_most_recently_admitted_whatever_it_loses() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0, started=0)
    world.running("a", "checkpointed", 4, admitted=10, started=10, checkpoint=990)
    world.running("a", "recent", 4, admitted=500, started=500)
    world.pending("b", "owner", 4)
    kueue = policy(team("a", 8), team("b", 8), preemption={"victimOrder": "priority-then-recent"})
    assert victims(world.decide(kueue, now=1000)) == ["a/recent"]
    assert victims(world.decide(policy(team("a", 8), team("b", 8)), now=1000)) == ["a/checkpointed"]


def test_the_fewest_victims_that_free_enough_are_chosen() -> None:
    world = World(gpus=20)
    world.running("a", "own", 4, admitted=0, started=0)
    world.running("a", "small", 2, admitted=999, started=999)
    world.running("a", "big", 8, admitted=100, started=100)
    world.running("b", "own", 6, admitted=0)
    world.pending("b", "owner", 8)
    decisions = world.decide(policy(team("a", 4, limit=500), team("b", 16)), now=1000)
    assert victims(decisions) == ["a/big"]


def test_reclaim_stops_at_the_borrowers_guarantee() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0)
    world.running("a", "borrowing", 4, admitted=5)
    world.running("c", "stranger", 4)  # a namespace no team owns holds the rest
    world.pending("b", "owner", 8)
    decisions = world.decide(policy(team("a", 8), team("b", 8)))
    assert victims(decisions) == []


def test_a_higher_priority_task_preempts_its_own_teams_lower_priority_task() -> None:
    world = World(gpus=8)
    world.running("a", "low", 8, "low")
    world.pending("a", "high", 8, "high")
    [preempt] = world.decide(policy(team("a", 8, preempt=True))).preempt
    assert (preempt.victim, preempt.cause) == ("a/low", PreemptCause.PRIORITY)
    assert "preempts lower-priority a/low" in preempt.reason


def test_a_team_without_preempt_lower_priority_never_preempts_for_priority() -> None:
    world = World(gpus=8)
    world.running("a", "low", 8, "low")
    world.pending("a", "high", 8, "high")
    assert victims(world.decide(policy(team("a", 8, preempt=False)))) == []


def test_an_equal_priority_task_is_never_preempted_for_priority() -> None:
    world = World(gpus=8)
    world.running("a", "peer", 8, "mid")
    world.pending("a", "newcomer", 8, "mid")
    assert victims(world.decide(policy(team("a", 8, preempt=True)))) == []


def test_priority_preemption_never_reaches_into_another_team() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, "critical")
    world.running("b", "theirs", 8, "low")
    world.pending("a", "high", 8, "high")
    assert victims(world.decide(policy(team("a", 8, preempt=True), team("b", 8)))) == []


def test_a_team_does_not_preempt_to_go_beyond_its_own_quota() -> None:
    world = World(gpus=32)
    world.running("a", "low", 8, "low")
    world.running("b", "theirs", 16, "low")
    world.pending("a", "huge", 16, "critical")
    decisions = world.decide(policy(team("a", 8, preempt=True, limit=1), team("b", 24)))
    assert victims(decisions) == []


def test_a_task_never_preempts_the_task_that_preempted_it_while_that_one_runs() -> None:
    world = World(gpus=8)
    world.running("a", "winner", 8, "low")
    loser = world.pending("a", "loser", 8, "high")
    loser.preempted_by = "a/winner"
    assert victims(world.decide(policy(team("a", 8, preempt=True)))) == []


def test_ping_pong_guard_leaves_other_victims_available() -> None:
    world = World(gpus=8)
    world.running("a", "winner", 4, "low", admitted=1)
    world.running("a", "other", 4, "low", admitted=2)
    loser = world.pending("a", "loser", 4, "high")
    loser.preempted_by = "a/winner"
    assert victims(world.decide(policy(team("a", 8, preempt=True)))) == ["a/other"]


def test_a_victim_gets_its_own_checkpoint_grace() -> None:
    world = World(gpus=8)
    low = world.running("a", "low", 8, "low")
    low.checkpoint_grace_s = 300.0
    world.pending("a", "high", 8, "high")
    [preempt] = world.decide(policy(team("a", 8, preempt=True))).preempt
    assert preempt.grace_s == 300.0


def test_a_victim_without_its_own_grace_gets_the_policy_default() -> None:
    world = World(gpus=8)
    world.running("a", "low", 8, "low")
    world.pending("a", "high", 8, "high")
    chosen = policy(team("a", 8, preempt=True), preemption={"defaultGraceSeconds": 45})
    assert world.decide(chosen).preempt[0].grace_s == 45.0


def test_gpus_already_being_freed_for_a_task_are_not_preempted_again() -> None:
    world = World(gpus=8)
    leaving = world.running("a", "low", 8, "low")
    leaving.state, leaving.preempted_by = TaskState.PREEMPTED, "a/high"
    world.running("a", "other", 0, "low")
    world.pending("a", "high", 8, "high")
    decisions = world.decide(policy(team("a", 8, preempt=True)))
    assert victims(decisions) == []
    assert "being freed by preemption" in decisions.waiting["a/high"]


def test_free_gpus_a_preemptor_counts_on_are_not_lent_meanwhile() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0)
    world.running("a", "borrowing", 4, admitted=1)
    world.pending("b", "owner", 8, at=5)  # 4 free + 4 to reclaim
    world.pending("a", "more", 4, at=6)  # would borrow the 4 free ones
    decisions = world.decide(policy(team("a", 8, limit=100), team("b", 8)))
    assert victims(decisions) == ["a/borrowing"]
    assert admitted(decisions) == []


def test_a_task_preempted_before_ranks_above_its_peers() -> None:
    world = World(gpus=8)
    world.pending("a", "fresh", 8, "mid", at=1)
    veteran = world.pending("a", "veteran", 8, "mid", at=2)
    veteran.times_preempted = 1
    assert admitted(world.decide(policy(team("a", 8)))) == ["a/veteran"]


def test_the_aging_boost_is_capped() -> None:
    world = World(gpus=8)
    veteran = world.pending("a", "veteran", 8, "mid")
    veteran.times_preempted = 50
    aging = policy(team("a", 8), preemption={"agingBoostPerPreemption": 5, "agingMaxBoost": 20})
    assert effective_priority(veteran, aging) == 50 + 20


def test_aging_never_lets_a_lower_class_preempt_a_higher_one() -> None:
    world = World(gpus=8)
    world.running("a", "mid", 8, "mid")
    veteran = world.pending("a", "veteran", 8, "low")
    veteran.times_preempted = 5
    aging = policy(
        team("a", 8, preempt=True),
        preemption={"agingBoostPerPreemption": 50, "agingMaxBoost": 100},
    )
    assert victims(world.decide(aging)) == []


def test_aging_protects_a_often_preempted_task_from_priority_preemption() -> None:
    world = World(gpus=8)
    survivor = world.running("a", "survivor", 8, "mid")
    survivor.times_preempted = 2
    world.pending("a", "high", 8, "high")
    aging = policy(
        team("a", 8, preempt=True),
        preemption={"agingBoostPerPreemption": 20, "agingMaxBoost": 40},
    )
    assert victims(world.decide(aging)) == []


def test_reclaim_applies_when_guarantees_shrink_after_a_fault() -> None:
    world = World(gpus=8)  # quotas 8 + 8 on 8 healthy GPUs: guarantees 4 and 4
    world.running("a", "x", 4, admitted=1)
    world.running("a", "y", 4, admitted=2)
    world.pending("b", "owner", 4)
    decisions = world.decide(policy(team("a", 8), team("b", 8)))
    assert victims(decisions) == ["a/y"]


def test_a_borrowers_highest_priority_tasks_fill_its_guarantee_first() -> None:
    world = World(gpus=16)
    world.running("a", "older-low", 8, "low", admitted=1)
    world.running("a", "newer-critical", 8, "critical", admitted=2)
    world.pending("b", "owner", 8)
    assert victims(world.decide(policy(team("a", 8), team("b", 8)))) == ["a/older-low"]


def test_a_team_beyond_its_own_quota_never_preempts_for_priority() -> None:
    world = World(gpus=16)
    world.running("a", "own-low", 8, "low", admitted=1)
    world.running("a", "borrowed-low", 8, "low", admitted=2)
    world.pending("a", "urgent", 8, "critical")
    decisions = world.decide(policy(team("a", 8, preempt=True), team("b", 8, lending="lend")))
    assert victims(decisions) == []


def test_priority_preemption_frees_only_what_the_task_needs() -> None:
    world = World(gpus=16)
    world.running("a", "low-1", 4, "low", admitted=1)
    world.running("a", "low-2", 4, "low", admitted=2)
    world.running("a", "low-3", 4, "low", admitted=3)
    world.running("b", "theirs", 4, "low")
    world.pending("a", "urgent", 4, "critical")
    decisions = world.decide(policy(team("a", 12, preempt=True), team("b", 4)))
    assert len(victims(decisions)) == 1


def test_two_preemptors_in_one_round_never_share_a_victim() -> None:
    world = World(gpus=24)
    world.running("a", "own", 8, admitted=0)
    world.running("a", "first-borrowed", 4, "low", admitted=1)
    world.running("a", "second-borrowed", 4, "low", admitted=2)
    world.running("b", "keeps", 8, "mid", admitted=0)
    world.pending("b", "one", 2, "high", at=1)
    world.pending("b", "two", 2, "high", at=2)
    decisions = world.decide(policy(team("a", 8), team("b", 16)))
    assert sorted(victims(decisions)) == ["a/first-borrowed", "a/second-borrowed"]


def test_a_lender_does_not_reclaim_from_the_task_that_preempted_it() -> None:
    world = reclaim_world()
    world.state.task("b/owner").preempted_by = "a/borrowing"
    assert victims(world.decide(policy(team("a", 8), team("b", 8)))) == []


def test_reclaim_stops_taking_from_a_team_once_it_is_back_within_its_guarantee() -> None:
    world = World(gpus=16)
    world.running("a", "anchor", 4, "high", admitted=0)
    world.running("a", "straddling", 4, "mid", admitted=1, started=0, checkpoint=990)
    world.running("a", "tail", 2, "mid", admitted=2, started=0)  # a: 10 held, 4 borrowed
    world.running("c", "borrower", 4, "high", admitted=0)  # c: 4 held, 2 borrowed
    world.pending("b", "owner", 8)
    decisions = world.decide(policy(team("a", 6), team("c", 2), team("b", 8)), now=1000)
    assert victims(decisions) == ["a/straddling", "c/borrower"]


def test_gpus_a_preemptor_waits_for_are_not_lent_while_it_waits() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=0)
    leaving = world.running("a", "leaving", 4, admitted=1)
    leaving.state, leaving.preempted_by = TaskState.PREEMPTED, "b/owner"
    world.pending("b", "owner", 8, at=5)  # 4 being freed for it + the 4 free ones
    world.pending("a", "more", 4, at=6)  # would borrow the 4 free ones
    decisions = world.decide(policy(team("a", 8, limit=100), team("b", 8)))
    assert (admitted(decisions), victims(decisions)) == ([], [])


# -- GPUs a preemptor waits for are its team's -----------------------------------------------


def test_reclaim_counts_gpus_the_team_already_awaits_this_round_and_preempts_no_more() -> None:
    world = World(gpus=8)  # a is guaranteed 4 and holds none; b is guaranteed 2, holds 8
    for index in range(4):
        world.running("b", f"b{index}", 2, admitted=index)
    for index in range(4):
        world.pending("a", f"a{index}", 2, at=10 + index)
    decisions = world.decide(policy(team("a", 4), team("b", 2)))
    assert sorted(victims(decisions)) == ["b/b2", "b/b3"]


def test_a_task_beyond_the_guarantee_once_preemptors_are_counted_says_so() -> None:
    world = World(gpus=8)
    for index in range(4):
        world.running("b", f"b{index}", 2, admitted=index)
    for index in range(3):
        world.pending("a", f"a{index}", 2, at=10 + index)
    decisions = world.decide(policy(team("a", 4), team("b", 2)))
    assert "at its guarantee" in decisions.waiting["a/a2"]


def test_gpus_awaited_from_a_priority_preemption_count_toward_the_teams_guarantee() -> None:
    world = World(gpus=8)
    world.running("a", "low", 2, "low", admitted=1)
    world.running("b", "own", 2, admitted=0)
    world.running("b", "borrowing", 4, admitted=2)  # b: 6 held, 4 of them borrowed
    first = world.pending("a", "first", 2, "high", at=1)
    first.preempted_by = "b/borrowing"  # so it cannot reclaim that one: it preempts "low"
    world.pending("a", "second", 4, "high", at=2)
    decisions = world.decide(policy(team("a", 4, preempt=True), team("b", 2)))
    # a: 2 awaited by "first" + 4 for "second" is past its guarantee of 4: no reclaim
    assert victims(decisions) == ["a/low"]


def test_each_higher_priority_task_preempts_in_the_same_round_while_the_team_fits() -> None:
    world = World(gpus=8)
    for index in range(4):
        world.running("a", f"low-{index}", 2, "low", admitted=index)
    for index in range(3):
        world.pending("a", f"high-{index}", 2, "high", at=10 + index)
    decisions = world.decide(policy(team("a", 8, preempt=True)))
    assert sorted(victims(decisions)) == ["a/low-1", "a/low-2", "a/low-3"]


def test_room_promised_to_a_preemptor_of_an_earlier_round_is_not_reclaimed_again() -> None:
    world = World(gpus=8)
    world.running("b", "b0", 2, admitted=0)
    world.running("b", "b1", 2, admitted=1)
    for index, preemptor in ((2, "a/a0"), (3, "a/a1")):
        leaving = world.running("b", f"b{index}", 2, admitted=index)
        leaving.state, leaving.preempted_by = TaskState.PREEMPTED, preemptor
    world.pending("a", "a0", 2, "mid", at=10)
    world.pending("a", "a1", 2, "mid", at=11)
    world.pending("a", "urgent", 2, "high", at=12)  # ahead of both in the queue
    decisions = world.decide(policy(team("a", 4), team("b", 2)))
    assert victims(decisions) == []
    assert "at its guarantee" in decisions.waiting["a/urgent"]


def test_gpus_freed_beyond_what_a_preemptor_needs_are_not_admitted_before_they_are_free() -> None:
    world = World(gpus=8)
    big = world.running("b", "big", 6, admitted=0)
    big.state, big.preempted_by = TaskState.PREEMPTED, "a/first"  # frees 6 for a 2-GPU task
    world.running("b", "small", 2, admitted=1)
    world.pending("a", "first", 2, at=10)
    world.pending("a", "second", 2, at=11)
    decisions = world.decide(policy(team("a", 4), team("b", 4)))
    assert admitted(decisions) == []


# -- GPUs freed by preemption go to the preemptor ---------------------------------------------


def released_world() -> World:
    """``a/winner`` preempted ``a/veteran``, whose pods are gone; aging put the veteran
    ahead of its preemptor in the queue, and its 8 GPUs are free."""
    world = World(gpus=8)
    world.pending("a", "winner", 8, "high", at=20)
    veteran = world.pending("a", "veteran", 8, "mid", at=10)
    veteran.state, veteran.requeue_cause = TaskState.REQUEUED, RequeueCause.PREEMPTION
    veteran.preempted_by, veteran.times_preempted = "a/winner", 2
    return world


def aging_policy() -> Policy:
    return policy(
        team("a", 8, preempt=True),
        preemption={"agingBoostPerPreemption": 20, "agingMaxBoost": 40},
    )


def test_gpus_freed_by_a_preemption_go_to_the_preemptor_not_back_to_the_victim() -> None:
    decisions = released_world().decide(aging_policy())
    assert admitted(decisions) == ["a/winner"]
    assert "at its guarantee" in decisions.waiting["a/veteran"]


def test_a_preemptor_that_no_longer_fits_its_guarantee_holds_nothing_back() -> None:
    world = World(gpus=12)
    world.running("a", "newcomer", 4, "critical", admitted=30)  # a now holds 4 of its 8
    world.pending("a", "winner", 8, "high", at=20)  # 4 + 8 is past a's guarantee
    victim = world.pending("b", "victim", 4, "mid", at=10)  # released: its GPUs are free
    victim.state, victim.requeue_cause = TaskState.REQUEUED, RequeueCause.PREEMPTION
    victim.preempted_by = "a/winner"
    world.pending("a", "small", 4, "critical", at=25)
    decisions = world.decide(policy(team("a", 8, lending="lend"), team("b", 4, lending="lend")))
    assert admitted(decisions) == ["a/small", "b/victim"]


# -- room on nodes (capacity per node) ----------------------------------------------------------


def test_no_task_is_preempted_for_pods_that_would_still_not_fit_on_any_node() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("a", "own", 4, admitted=0, nodes={"n1": 4})
    world.running("b", "own", 4, admitted=0, nodes={"n2": 4})
    world.running("b", "on-n1", 4, admitted=1, nodes={"n1": 4})
    world.running("b", "on-n2", 4, admitted=2, nodes={"n2": 4})
    world.pending("a", "whole-node", 8)  # 8 GPUs would be freed, but 4 on each node
    decisions = world.decide(policy(team("a", 12), team("b", 4)))
    assert victims(decisions) == []
    assert "nothing can be preempted" in decisions.waiting["a/whole-node"]


def test_reclaim_takes_the_victims_that_make_room_on_one_node() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("b", "keep", 4, admitted=0, nodes={"n1": 4})
    world.running("b", "n1-cheapest", 4, admitted=9, started=999, nodes={"n1": 4})
    world.running("b", "n2-first", 4, admitted=2, started=900, nodes={"n2": 4})
    world.running("b", "n2-second", 4, admitted=1, started=800, nodes={"n2": 4})
    world.pending("a", "whole-node", 8)
    decisions = world.decide(policy(team("a", 8), team("b", 4)), now=1000)
    assert sorted(victims(decisions)) == ["b/n2-first", "b/n2-second"]


def test_free_gpus_on_the_wrong_nodes_lead_to_a_reclaim_that_makes_room() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("b", "own", 4, admitted=0, nodes={"n2": 4})
    world.running("b", "borrowing", 4, admitted=1, nodes={"n1": 4})
    world.pending("a", "whole-node", 8)  # 8 GPUs are free, 4 on each node
    decisions = world.decide(policy(team("a", 8), team("b", 4)))
    assert victims(decisions) == ["b/borrowing"]


def test_free_gpus_a_preemptor_will_use_are_not_placed_for_a_later_task() -> None:
    world = World(nodes={"n1": 8, "n2": 8})
    world.running("b", "own", 4, admitted=0, nodes={"n2": 4})
    world.running("b", "borrowing", 4, admitted=1, nodes={"n1": 4})
    world.pending("a", "whole-node", 8, at=1)  # will use n1: 4 free + 4 being freed
    world.pending("c", "small", 4, at=2)
    decisions = world.decide(policy(team("a", 8), team("b", 4), team("c", 4)))
    [admit] = decisions.admit
    assert (admit.task, admit.nodes) == ("c/small", (("n2", 4),))


def idle_world() -> World:
    """Team a borrows with two tasks of one class; the one that would lose less work is
    busy, the other holds its GPUs idle."""
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=1)
    world.running("a", "busy", 4, admitted=2, started=2, checkpoint=95)
    idle = world.running("a", "idle", 4, admitted=3, started=3)
    idle.idle_since = 50.0
    world.pending("b", "owner", 4, at=90)
    return world


def test_with_idle_first_an_idle_task_is_the_victim_before_a_busy_one_of_its_standing() -> None:
    chosen = policy(team("a", 8), team("b", 8), preemption={"idleFirst": True})
    assert victims(idle_world().decide(chosen, now=100)) == ["a/idle"]


def test_without_idle_first_idleness_does_not_change_the_victim_order() -> None:
    # the busy task checkpointed recently: it loses the least work, so it goes first
    assert victims(idle_world().decide(policy(team("a", 8), team("b", 8)), now=100)) == [
        "a/busy"
    ]


def test_idle_first_never_puts_an_idle_task_of_higher_priority_first() -> None:
    world = World(gpus=16)
    world.running("a", "own", 8, admitted=1)
    world.running("a", "busy-low", 4, "low", admitted=2)
    world.running("a", "idle-high", 4, "high", admitted=3).idle_since = 1.0
    world.pending("b", "owner", 4, at=90)
    chosen = policy(team("a", 8), team("b", 8), preemption={"idleFirst": True})
    assert victims(world.decide(chosen, now=100)) == ["a/busy-low"]
