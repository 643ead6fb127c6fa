"""Checkpoint-aware requeue of the tasks on a node that failed."""

from __future__ import annotations

from coordinator.governance import Fail, Requeue, RequeueSettings, TaskState, on_node_fault
from coordinator.governance.requeue import on_admission_timeout
from tests.governance_world import World

SETTINGS = RequeueSettings(max_requeues=3, backoff_seconds=30, backoff_max_seconds=100)


def test_tasks_on_the_failed_node_are_requeued() -> None:
    world = World(gpus=16)
    world.running("a", "hit", 8, nodes={"n1": 8})
    world.running("a", "spared", 8, nodes={"n2": 8})
    decisions = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert [(type(d), d.task) for d in decisions] == [(Requeue, "a/hit")]


def test_a_gang_with_one_pod_on_the_failed_node_is_requeued_whole() -> None:
    world = World(gpus=16)
    world.running("a", "gang", 16, nodes={"n1": 8, "n2": 8})
    [decision] = on_node_fault(world.state.tasks.values(), "n2", 500, SETTINGS)
    assert isinstance(decision, Requeue) and decision.task == "a/gang"


def test_the_first_requeue_backs_off_the_base_time() -> None:
    world = World(gpus=8)
    world.running("a", "t", 8, nodes={"n1": 8})
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Requeue)
    assert (decision.backoff_until, decision.counted) == (530, True)


def test_backoff_doubles_with_each_requeue_up_to_the_cap() -> None:
    world = World(gpus=8)
    task = world.running("a", "t", 8, nodes={"n1": 8})
    task.requeue_count = 2
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Requeue)
    assert decision.backoff_until == 500 + 100  # 30 * 2**2 = 120, capped at 100


def test_a_task_past_its_max_requeues_fails() -> None:
    world = World(gpus=8)
    task = world.running("a", "t", 8, nodes={"n1": 8})
    task.requeue_count = 3
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Fail)
    assert "requeued 3 times (max 3)" in decision.reason


def test_a_tasks_own_max_requeues_overrides_the_policy() -> None:
    world = World(gpus=8)
    task = world.running("a", "t", 8, nodes={"n1": 8})
    task.requeue_count, task.max_requeues = 3, 5
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Requeue)


def test_the_lost_work_is_counted_from_the_last_checkpoint() -> None:
    world = World(gpus=8)
    world.running("a", "t", 8, started=100, checkpoint=400, nodes={"n1": 8})
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Requeue)
    assert decision.lost_gpu_s == 8 * 100


def test_a_task_being_preempted_is_requeued_without_using_a_requeue() -> None:
    world = World(gpus=8)
    task = world.running("a", "t", 8, nodes={"n1": 8})
    task.state = TaskState.PREEMPTED
    [decision] = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert isinstance(decision, Requeue)
    assert (decision.counted, decision.backoff_until) == (False, 500)


def test_waiting_tasks_are_not_touched_by_a_fault() -> None:
    world = World(gpus=8)
    world.pending("a", "t", 8)
    assert on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS) == []


def test_a_requeued_task_returns_to_its_original_place_after_applying() -> None:
    world = World(gpus=8)
    task = world.running("a", "t", 8, admitted=42, nodes={"n1": 8})
    task.queued_at = 7
    world.state.apply_all(on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS), 500)
    assert (task.state, task.queued_at, task.requeue_count) == (TaskState.REQUEUED, 7, 1)


def test_fault_decisions_come_in_task_key_order() -> None:
    world = World(gpus=16)
    world.running("b", "z", 4, nodes={"n1": 4})
    world.running("a", "y", 4, nodes={"n1": 4})
    decisions = on_node_fault(world.state.tasks.values(), "n1", 500, SETTINGS)
    assert [d.task for d in decisions] == ["a/y", "b/z"]


# -- admitted tasks whose pods never run (Kueue's waitForPodsReady) --------------------------

TIMEOUT = RequeueSettings(
    max_requeues=2, backoff_seconds=30, backoff_max_seconds=100, admitted_timeout_seconds=300
)


def admitted_at(world: World, name: str, at: float) -> None:
    task = world.pending("a", name, 8)
    task.state, task.admitted_at = TaskState.ADMITTED, at


def test_an_admitted_task_whose_pods_do_not_run_in_time_is_requeued_with_backoff() -> None:
    world = World(gpus=8)
    admitted_at(world, "stuck", 100)
    [decision] = on_admission_timeout(world.state.tasks.values(), 400, TIMEOUT)
    assert isinstance(decision, Requeue)
    assert (decision.task, decision.counted, decision.backoff_until) == ("a/stuck", True, 430)
    assert "not all running 300 s after admission" in decision.reason


def test_an_admitted_task_within_its_time_is_left_alone() -> None:
    world = World(gpus=8)
    admitted_at(world, "pulling", 200)
    assert on_admission_timeout(world.state.tasks.values(), 400, TIMEOUT) == []


def test_a_running_task_is_never_timed_out() -> None:
    world = World(gpus=8)
    world.running("a", "fine", 8, admitted=0)
    assert on_admission_timeout(world.state.tasks.values(), 10_000, TIMEOUT) == []


def test_a_task_timed_out_past_its_max_requeues_fails() -> None:
    world = World(gpus=8)
    admitted_at(world, "hopeless", 0)
    world.state.task("a/hopeless").requeue_count = 2
    [decision] = on_admission_timeout(world.state.tasks.values(), 400, TIMEOUT)
    assert isinstance(decision, Fail)


def test_no_timeout_when_the_policy_sets_none() -> None:
    world = World(gpus=8)
    admitted_at(world, "stuck", 0)
    never = RequeueSettings(admitted_timeout_seconds=None)
    assert on_admission_timeout(world.state.tasks.values(), 10**9, never) == []
