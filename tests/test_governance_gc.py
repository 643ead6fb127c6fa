"""A governance round leaves no reference cycles: everything it builds is freed by reference
counting as it returns, so no round leaves work for the cyclic garbage collector (whose
collections, some of them full ones, would land inside later rounds)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from coordinator.governance import Decisions, Policy, PreemptCause, RequeueCause, TaskState
from tests.governance_world import World, policy, team

NODES = 80
GPUS_PER_NODE = 8


@pytest.fixture
def collector_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Filler:
    """Puts running tasks on the first node with room, as a scheduler would."""

    def __init__(self, world: World, *, per_node: bool) -> None:
        self.world = world
        self.per_node = per_node
        self.free = {f"node-{index:02d}": GPUS_PER_NODE for index in range(NODES)}

    def run(self, namespace: str, name: str, gpus: int, cls: str, at: float) -> None:
        node = next(node for node, free in self.free.items() if free >= gpus)
        self.free[node] -= gpus
        placement = {node: gpus} if self.per_node else None
        self.world.running(namespace, name, gpus, cls, admitted=at, nodes=placement)


def busy_world(*, per_node: bool) -> World:
    """About 300 tasks on 80 nodes: "owner" lent most of its quota to "wide" and reclaims
    it; "deep" sits at its quota with critical work waiting on its low-priority tasks;
    "small" is past its quota and asks to borrow; some victims of "owner" are still
    leaving, others are back in the queue with their GPUs owed to it."""
    nodes = {f"node-{index:02d}": GPUS_PER_NODE for index in range(NODES)}
    world = World(nodes=nodes) if per_node else World(gpus=NODES * GPUS_PER_NODE)
    fill = Filler(world, per_node=per_node)
    for index in range(40):
        fill.run("owner", f"own-{index}", 2, "mid", at=index)
        fill.run("deep", f"low-{index}", 2, "low", at=index)
        fill.run("deep", f"more-low-{index}", 2, "low", at=index)
        world.pending("owner", f"reclaims-{index}", 4, "mid", at=100 + index)
    for index in range(60):
        fill.run("wide", f"borrowing-{index}", 4, "mid", at=index)
        world.pending("small", f"borrows-{index}", 1, "mid", at=100 + index)
    for index in range(10):
        fill.run("small", f"own-{index}", 4, "mid", at=index)
        world.pending("deep", f"critical-{index}", 2, "critical", at=100 + index)
    for index in range(3):
        leaving = world.state.task(f"wide/borrowing-{index}")
        leaving.state, leaving.preempted_by = TaskState.PREEMPTED, f"owner/reclaims-{index}"
        released = world.state.task(f"small/borrows-{index}")
        released.state, released.requeue_cause = TaskState.REQUEUED, RequeueCause.PREEMPTION
        released.preempted_by = f"owner/reclaims-{10 + index}"
    return world


def busy_policy(**extra: Any) -> Policy:
    return policy(
        team("owner", 320),
        team("wide", 80, limit=300),
        team("deep", 160, preempt=True),
        team("small", 20, limit=500),
        **extra,
    )


def round_of(world: World) -> Decisions:
    return world.decide(busy_policy())


@pytest.mark.parametrize("per_node", [True, False], ids=["capacity-per-node", "capacity-count"])
def test_a_round_over_hundreds_of_tasks_leaves_no_reference_cycles(
    per_node: bool, collector_off: None
) -> None:
    world = busy_world(per_node=per_node)
    gc.collect()
    decisions = round_of(world)
    assert gc.collect() == 0
    # The round did each kind of work, so the paths that build the most were all walked.
    assert {preempt.cause for preempt in decisions.preempt} == {
        PreemptCause.RECLAIM,
        PreemptCause.PRIORITY,
    }
    assert decisions.admit
    assert any("borrow" in reason for reason in decisions.waiting.values())


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generation of every collection that starts while the test runs."""
    started: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(count)
    try:
        yield started
    finally:
        gc.callbacks.remove(count)


def test_the_cyclic_collector_does_not_run_during_a_round(collections: list[int]) -> None:
    """It would only walk the round's own objects, which reference counting frees anyway
    (above): 4-8 % of a round over 10,000 tasks (docs/benchmarks.md)."""
    world, rules = busy_world(per_node=True), busy_policy()
    gc.collect()
    thresholds = gc.get_threshold()
    gc.set_threshold(10)  # a round over 300 tasks, as one over 10,000 at the default 700
    try:
        collections.clear()
        world.decide(rules)
    finally:
        gc.set_threshold(*thresholds)
    assert collections == []
    assert gc.isenabled()


def test_a_round_leaves_the_collector_off_when_its_caller_turned_it_off(
    collector_off: None,
) -> None:
    round_of(busy_world(per_node=True))
    assert not gc.isenabled()


def test_a_round_that_stops_at_its_victim_budget_leaves_no_reference_cycles(
    collector_off: None,
) -> None:
    """The stop unwinds the passes with an exception, whose traceback holds their frames."""
    world = busy_world(per_node=True)
    rules = busy_policy(preemption={"maxVictimsPerRound": 3})
    gc.collect()
    decisions = world.decide(rules)
    assert gc.collect() == 0
    assert decisions.stopped_at is not None
