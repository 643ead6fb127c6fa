"""Summaries per team and per priority class for the API and metrics."""

from __future__ import annotations

import pytest

from coordinator.governance import RequeueCause, TaskState, class_summaries, team_summaries
from tests.governance_world import World, policy, team


def test_a_team_summary_shows_allocated_in_use_borrowed_and_lent() -> None:
    world = World(gpus=16)
    world.running("a", "x", 8)
    world.running("a", "y", 4)
    admitted_only = world.running("a", "z", 2)
    admitted_only.state = TaskState.ADMITTED
    world.pending("b", "w", 1)
    a, b = team_summaries(world.state, policy(team("a", 8), team("b", 8)))
    assert (a.quota, a.allocated, a.in_use, a.borrowed, a.lent) == (8, 14, 12, 6, 0)
    assert (b.allocated, b.borrowed, b.lent, b.pending_tasks) == (0, 0, 6, 1)


def test_borrowing_is_served_from_unowned_gpus_before_lenders() -> None:
    world = World(gpus=20)
    world.running("a", "x", 12)
    _, b = team_summaries(world.state, policy(team("a", 8), team("b", 8)))
    assert b.lent == 0  # the 4 borrowed GPUs belong to no team


def test_lending_is_split_among_lenders_by_their_idle_gpus() -> None:
    world = World(gpus=24)
    world.running("a", "x", 12)
    world.running("c", "y", 4)
    _, b, c = team_summaries(world.state, policy(team("a", 8), team("b", 8), team("c", 8)))
    assert (b.lent, c.lent) == (3, 1)


def test_a_team_summary_shows_its_scaled_guarantee() -> None:
    world = World(gpus=8)
    a, b = team_summaries(world.state, policy(team("a", 12), team("b", 4)))
    assert (a.quota, a.guarantee, b.guarantee) == (12, 6, 2)


def test_a_class_summary_counts_running_pending_and_preempted() -> None:
    world = World(gpus=32)
    world.running("a", "r1", 1, "high")
    world.running("a", "r2", 1, "high")
    world.pending("a", "p1", 1, "high")
    leaving = world.running("a", "x", 1, "high")
    leaving.state = TaskState.PREEMPTED
    back = world.pending("a", "y", 1, "high")
    back.state, back.requeue_cause = TaskState.REQUEUED, RequeueCause.PREEMPTION
    summary = next(
        s
        for s in class_summaries(world.state, policy(team("a", 8)), 100)
        if s.priority_class == "high"
    )
    assert (summary.running, summary.pending, summary.preempted) == (2, 2, 2)


def test_a_class_summary_averages_run_and_wait_times() -> None:
    world = World(gpus=32)
    first = world.running("a", "r1", 1, "low", admitted=10, started=10)
    first.queued_at = 0
    second = world.running("a", "r2", 1, "low", admitted=40, started=70)
    second.queued_at = 10
    world.pending("a", "p", 1, "low", at=90)
    summary = next(
        s
        for s in class_summaries(world.state, policy(team("a", 8)), 100)
        if s.priority_class == "low"
    )
    assert (summary.avg_run_s, summary.longest_run_s) == (60.0, 90.0)
    # waits: r1 10 s, r2 30 s, p still waiting 10 s
    assert summary.avg_wait_s == pytest.approx(50 / 3)
    assert summary.longest_wait_s == 30.0


def test_every_policy_class_has_a_line_even_without_tasks() -> None:
    world = World(gpus=8)
    names = [s.priority_class for s in class_summaries(world.state, policy(team("a", 8)), 0)]
    assert names == ["critical", "high", "mid", "low"]


def test_tasks_of_an_unknown_class_get_their_own_line() -> None:
    world = World(gpus=8)
    world.pending("a", "t", 1, "mystery")
    lines = class_summaries(world.state, policy(team("a", 8)), 0)
    assert lines[-1].priority_class == "mystery" and lines[-1].pending == 1
