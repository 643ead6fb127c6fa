"""Bounded wait: once the first task of a team's queue has waited longer than
``reservation.afterWaitSeconds``, capacity is held for it as it frees up, and tasks behind
it use only GPUs that do not delay it (Slurm's backfill reservation)."""

from __future__ import annotations

from typing import Any

from coordinator.governance import Policy
from coordinator.governance.simcluster import SimCluster, SimEvent
from coordinator.governance.workload import workload_from_mapping
from tests.governance_world import World, admitted, policy, team

HOUR = 3600.0
NOW = 10 * HOUR


def reserving(*teams: dict[str, Any], after: float | None = HOUR, **extra: Any) -> Policy:
    return policy(*teams, reservation={"afterWaitSeconds": after}, **extra)


def small_stream_world(*, free: int, gang_waited: float) -> World:
    """Two 8-GPU nodes of team a's, all but ``free`` GPUs of each busy with 1-GPU tasks; a
    whole-node task waits, and behind it a queue of 1-GPU tasks."""
    world = World(nodes={"n1": 8, "n2": 8})
    index = 0
    for node in ("n1", "n2"):
        for _ in range(8 - free):
            world.running("a", f"small-{index}", 1, admitted=index, nodes={node: 1})
            index += 1
    world.pending("a", "gang", 8, at=NOW - gang_waited)
    for later in range(6):
        world.pending("a", f"next-{later}", 1, at=NOW - gang_waited + 60 + later)
    return world


def test_before_the_limit_smaller_tasks_behind_a_big_one_take_the_free_gpus() -> None:
    world = small_stream_world(free=5, gang_waited=0.5 * HOUR)
    decisions = world.decide(reserving(team("a", 16)), now=NOW)
    assert sorted(admitted(decisions)) == [f"a/next-{i}" for i in range(6)]


def test_past_the_limit_the_free_gpus_of_the_nodes_that_will_fit_it_soonest_are_held() -> None:
    world = small_stream_world(free=5, gang_waited=2 * HOUR)
    decisions = world.decide(reserving(team("a", 16)), now=NOW)
    # n1 and n2 are alike: n1 (by name) is held for the gang; the tasks behind it take n2's
    # 5 free GPUs (2 within the team's guarantee with the gang counted, 3 borrowing)
    assert sorted(admitted(decisions)) == [f"a/next-{i}" for i in range(5)]
    assert "5 GPUs held for it" in decisions.waiting["a/gang"]
    assert {admit.nodes for admit in decisions.admit} == {(("n2", 1),)}


def test_a_held_node_goes_to_the_big_task_once_enough_of_it_is_free() -> None:
    world = small_stream_world(free=5, gang_waited=2 * HOUR)
    for index in range(3):  # n1's small tasks end
        world.state.remove(f"a/small-{index}")
    decisions = world.decide(reserving(team("a", 16)), now=NOW)
    assert "a/gang" in admitted(decisions)


def test_without_a_limit_the_queue_is_best_effort_as_before() -> None:
    world = small_stream_world(free=5, gang_waited=100 * HOUR)
    decisions = world.decide(reserving(team("a", 16), after=None), now=NOW)
    assert sorted(admitted(decisions)) == [f"a/next-{i}" for i in range(6)]


def test_past_the_limit_the_teams_guarantee_is_kept_for_it_too() -> None:
    """Team a (guaranteed 8) holds 6 GPUs in 1-GPU tasks; its 4-GPU task has waited past the
    limit: the 2 GPUs of the guarantee left are not given to the 1-GPU tasks behind it."""
    world = World(gpus=16)
    for index in range(6):
        world.running("a", f"small-{index}", 1, admitted=index)
    world.pending("a", "four", 4, at=NOW - 2 * HOUR)
    world.pending("a", "one", 1, at=NOW - HOUR)
    world.running("b", "b", 8, admitted=0)
    decisions = world.decide(reserving(team("a", 8, lending="lend"), team("b", 8)), now=NOW)
    assert admitted(decisions) == []
    assert "a/four" in decisions.waiting["a/one"]


def test_only_the_first_task_of_a_teams_queue_past_the_limit_holds_anything() -> None:
    world = small_stream_world(free=5, gang_waited=2 * HOUR)
    world.pending("a", "second-gang", 8, at=NOW - 1.9 * HOUR)
    decisions = world.decide(reserving(team("a", 16)), now=NOW)
    assert "held for it" in decisions.waiting["a/gang"]
    assert "held for it" not in decisions.waiting["a/second-gang"]


def test_a_task_that_can_never_fit_the_guarantee_holds_nothing() -> None:
    world = small_stream_world(free=5, gang_waited=2 * HOUR)
    decisions = world.decide(reserving(team("a", 6, limit=200)), now=NOW)
    assert "held for it" not in decisions.waiting.get("a/gang", "")


def test_capacity_as_a_count_keeps_the_guarantee_for_it() -> None:
    world = World(gpus=16)
    for index in range(10):
        world.running("a", f"small-{index}", 1, admitted=index)
    world.pending("a", "gang", 8, at=NOW - 2 * HOUR)
    world.pending("a", "one", 1, at=NOW - HOUR)
    decisions = world.decide(reserving(team("a", 16)), now=NOW)
    assert admitted(decisions) == []
    assert "guarantee is kept for it" in decisions.waiting["a/gang"]
    assert "behind a/gang" in decisions.waiting["a/one"]


# -- in the simulated cluster ---------------------------------------------------------------------


def starving_week(chosen: Policy) -> tuple[SimCluster, list[SimEvent]]:
    """Two nodes, one team: a stream of 1-GPU tasks that keeps every GPU busy, and one
    whole-node task arriving in the first hour (the issue's starving gang)."""
    load = workload_from_mapping(
        {
            "seed": 3,
            "cluster": {"nodes": 2, "gpusPerNode": 8},
            "tasks": [{"team": "a", "name": "gang", "gpus": 8, "duration": "2h", "arrival": "1h"}],
            "streams": [
                {"team": "a", "every": "3m", "until": "7d", "gpus": [1], "duration": ["30m", "2h"]}
            ],
        }
    )
    events: list[SimEvent] = []
    return SimCluster(chosen, load, on_event=events.append), events


def gang_start(events: list[SimEvent]) -> float | None:
    return next((e.time for e in events if e.kind == "admit" and e.subject == "a/gang"), None)


def test_a_whole_node_task_behind_a_stream_of_1_gpu_tasks_starts_within_its_bound() -> None:
    sim, events = starving_week(policy(team("a", 16)))  # the default limit: one hour
    sim.run_until(7 * 24 * HOUR)
    started = gang_start(events)
    assert started is not None
    # past the limit, its node drains as the 1-GPU tasks on it end (2 h at most)
    assert started - HOUR <= HOUR + 2 * HOUR + 60


def test_best_effort_alone_starves_it_for_the_week() -> None:
    """Why the reservation exists: without it the same week never starts the gang."""
    sim, events = starving_week(reserving(team("a", 16), after=None))
    sim.run_until(7 * 24 * HOUR)
    assert gang_start(events) is None
