"""The task model and its state machine."""

from __future__ import annotations

import pytest

from coordinator.governance import (
    Admit,
    Capacity,
    Fail,
    GovernanceState,
    InvalidTransitionError,
    Preempt,
    PreemptCause,
    Requeue,
    RequeueCause,
    Task,
    TaskState,
)


def state_with(*tasks: Task) -> GovernanceState:
    state = GovernanceState(Capacity.of_count(64))
    for task in tasks:
        state.add(task)
    return state


def admit(key: str, nodes: tuple[tuple[str, int], ...] | None = None) -> Admit:
    return Admit(key, "team", 8, 0, "test", nodes)


def preempt(victim: str, by: str, grace: float = 30.0) -> Preempt:
    return Preempt(victim, by, PreemptCause.PRIORITY, grace, 8, 0.0, "test")


def test_a_task_key_is_namespace_slash_name() -> None:
    assert Task("research", "llm", (8,), queued_at=0).key == "research/llm"


def test_a_gangs_demand_is_the_sum_over_its_pods() -> None:
    assert Task("r", "gang", (8, 8, 0), queued_at=0, size=3).gpus == 16


def test_a_gang_is_complete_only_when_all_its_pods_are_known() -> None:
    assert not Task("r", "gang", (8, 8), queued_at=0, size=3).complete
    assert Task("r", "gang", (8, 8, 8), queued_at=0, size=3).complete


def test_a_task_of_size_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        Task("r", "t", (1,), queued_at=0, size=0)


def test_adding_the_same_task_twice_is_refused() -> None:
    state = state_with(Task("r", "t", (1,), queued_at=0))
    with pytest.raises(ValueError, match="already"):
        state.add(Task("r", "t", (1,), queued_at=0))


def test_admit_records_the_time_and_the_placement() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(admit("r/t", (("node-1", 8),)), now=5)
    task = state.task("r/t")
    assert (task.state, task.admitted_at, dict(task.placement)) == (
        TaskState.ADMITTED,
        5,
        {"node-1": 8},
    )


def test_start_makes_an_admitted_task_running() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(admit("r/t"), now=5)
    state.start("r/t", now=6)
    assert (state.task("r/t").state, state.task("r/t").started_at) == (TaskState.RUNNING, 6)


def test_preempt_records_the_preemptor_and_counts() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(admit("r/t"), now=1)
    state.start("r/t", now=1)
    state.apply(preempt("r/t", by="r/hi", grace=30), now=10)
    task = state.task("r/t")
    assert task.state is TaskState.PREEMPTED
    assert (task.preempted_by, task.preempted_at, task.grace_until) == ("r/hi", 10, 40)
    assert task.times_preempted == 1


def test_release_requeues_a_preempted_task_without_backoff_or_a_used_requeue() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=3))
    state.apply(admit("r/t"), now=4)
    state.start("r/t", now=4)
    state.apply(preempt("r/t", by="r/hi"), now=10)
    state.release("r/t", now=40)
    task = state.task("r/t")
    assert task.state is TaskState.REQUEUED
    assert (task.requeue_count, task.backoff_until, task.queued_at) == (0, None, 3)
    assert task.requeue_cause is RequeueCause.PREEMPTION


def test_a_fault_requeue_keeps_the_original_arrival_and_counts() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=3))
    state.apply(admit("r/t", (("n1", 8),)), now=4)
    state.start("r/t", now=4)
    state.apply(Requeue("r/t", backoff_until=100, counted=True, lost_gpu_s=0, reason="x"), now=50)
    task = state.task("r/t")
    assert (task.state, task.queued_at, task.requeue_count) == (TaskState.REQUEUED, 3, 1)
    assert (task.backoff_until, dict(task.placement)) == (100, {})


def test_fail_is_final() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(Fail("r/t", "too many requeues"), now=9)
    assert state.task("r/t").state is TaskState.FAILED
    with pytest.raises(InvalidTransitionError):
        state.apply(admit("r/t"), now=10)


def test_a_running_task_cannot_be_admitted_again() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(admit("r/t"), now=1)
    with pytest.raises(InvalidTransitionError, match="cannot admit task r/t: it is admitted"):
        state.apply(admit("r/t"), now=2)


def test_a_pending_task_cannot_be_preempted() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    with pytest.raises(InvalidTransitionError):
        state.apply(preempt("r/t", by="r/x"), now=1)


def test_only_a_preempted_task_can_be_released() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    with pytest.raises(InvalidTransitionError):
        state.release("r/t", now=1)


def test_finish_frees_the_placement() -> None:
    state = state_with(Task("r", "t", (8,), queued_at=0))
    state.apply(admit("r/t", (("n1", 8),)), now=1)
    state.start("r/t", now=1)
    state.finish("r/t", now=9)
    task = state.task("r/t")
    assert (task.state, task.finished_at, dict(task.placement)) == (TaskState.FINISHED, 9, {})


def test_work_at_risk_counts_from_the_last_checkpoint() -> None:
    state = state_with(Task("r", "t", (4, 4), queued_at=0, size=2))
    state.apply(admit("r/t"), now=0)
    state.start("r/t", now=100)
    state.checkpoint("r/t", at=160)
    assert state.task("r/t").work_at_risk(now=200) == 8 * 40


def test_work_at_risk_counts_from_the_start_without_a_checkpoint() -> None:
    state = state_with(Task("r", "t", (2,), queued_at=0))
    state.apply(admit("r/t"), now=0)
    state.start("r/t", now=100)
    assert state.task("r/t").work_at_risk(now=130) == 60


def test_an_admitted_task_that_has_not_started_risks_nothing() -> None:
    state = state_with(Task("r", "t", (2,), queued_at=0))
    state.apply(admit("r/t"), now=0)
    assert state.task("r/t").work_at_risk(now=130) == 0
