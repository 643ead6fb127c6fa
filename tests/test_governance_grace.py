"""A victim's checkpoint grace: its own (the pod annotation), capped at the policy maximum;
a value that is no number of seconds is refused and the policy default used instead."""

from __future__ import annotations

from coordinator.governance.grace import read_grace
from coordinator.governance.policy import PreemptionSettings
from tests.governance_world import World, policy, team

SETTINGS = PreemptionSettings(default_grace_seconds=30, max_grace_seconds=600)


def test_a_grace_within_the_maximum_is_used_as_asked() -> None:
    reading = read_grace("120", SETTINGS)
    assert (reading.seconds, reading.problem) == (120, None)


def test_no_annotation_means_the_policy_default_without_a_word() -> None:
    assert (read_grace(None, SETTINGS).seconds, read_grace(None, SETTINGS).problem) == (30, None)


def test_a_grace_of_days_is_capped_at_the_maximum_and_says_so() -> None:
    reading = read_grace("864000", SETTINGS)
    assert reading.seconds == 600
    assert reading.problem is not None
    assert "864000" in reading.problem and "600 s is used instead" in reading.problem


def test_a_grace_that_is_not_a_number_is_refused_for_the_default() -> None:
    reading = read_grace("ten minutes", SETTINGS)
    assert reading.seconds == 30
    assert reading.problem is not None
    assert "'ten minutes' is not a number of seconds" in reading.problem
    assert "30 s is used instead" in reading.problem


def test_a_negative_grace_is_refused_for_the_default() -> None:
    reading = read_grace("-5", SETTINGS)
    assert reading.seconds == 30
    assert reading.problem is not None and "negative" in reading.problem


def test_the_engine_gives_a_victim_at_most_the_maximum_grace() -> None:
    world = World(gpus=8)
    world.running("a", "low", 8, "low").checkpoint_grace_s = 864_000
    world.pending("a", "high", 8, "high")
    chosen = policy(team("a", 8, preempt=True), preemption={"maxGraceSeconds": 300})
    [preempt] = world.decide(chosen).preempt
    assert preempt.grace_s == 300
