"""The team numbers add up: every borrowed GPU is lent by a team or comes from capacity
outside every quota (the unassigned line), on any state the engine can reach."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.governance import Capacity, GovernanceState, Policy, Task, decide
from coordinator.governance.observe import team_summaries, unassigned_summary
from tests.governance_world import CLASSES, World, policy, team
from tests.test_governance_properties import policies


@st.composite
def engine_states(draw: st.DrawFn) -> tuple[Policy, GovernanceState]:
    """Tasks arrive, the engine admits and preempts over a few rounds, some tasks start,
    victims leave and some tasks finish: only states the engine itself produces."""
    chosen = draw(policies())
    state = GovernanceState(Capacity.of_count(draw(st.integers(0, 48))))
    namespaces = [t.namespace for t in chosen.teams]
    now = 0.0
    for round_ in range(draw(st.integers(1, 5))):
        for index in range(draw(st.integers(0, 6))):
            state.add(Task(draw(st.sampled_from(namespaces)), f"r{round_}t{index}",
                           (draw(st.integers(1, 8)),), queued_at=now,
                           priority_class=draw(st.sampled_from([*CLASSES, None]))))  # fmt: skip
        now += 10.0
        state.apply_all(decide(state, chosen, now), now)
        for task in list(state.tasks.values()):
            if task.state.value == "admitted":
                state.start(task.key, now)
            elif task.state.value == "preempted":
                state.release(task.key, now)
            elif task.state.value == "running" and draw(st.booleans()):
                state.finish(task.key, now)
    return chosen, state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(engine_states())
def test_borrowed_gpus_equal_lent_plus_unassigned_used(
    world: tuple[Policy, GovernanceState],
) -> None:
    chosen, state = world
    teams = team_summaries(state, chosen)
    unassigned = unassigned_summary(state, teams)
    assert sum(t.borrowed for t in teams) == sum(t.lent for t in teams) + unassigned.used
    assert 0 <= unassigned.used <= unassigned.gpus


def test_unassigned_capacity_is_healthy_gpus_beyond_the_guarantees() -> None:
    world = World(gpus=20)
    world.running("a", "x", 12)
    teams = team_summaries(world.state, policy(team("a", 8), team("b", 8)))
    unassigned = unassigned_summary(world.state, teams)
    assert (unassigned.gpus, unassigned.used) == (4, 4)
    assert [t.lent for t in teams] == [0, 0]


def test_there_is_no_unassigned_capacity_when_quotas_exceed_the_cluster() -> None:
    world = World(gpus=8)
    teams = team_summaries(world.state, policy(team("a", 12), team("b", 4)))
    assert unassigned_summary(world.state, teams).gpus == 0


def test_a_borrower_left_on_a_dont_lend_teams_idle_guarantee_counts_as_lent_by_it() -> None:
    """b borrowed a's idle GPU; a came back and took the free one, which was c's guarantee:
    b now runs on c's idle guarantee (c takes it back by reclaim when it needs it)."""
    world = World(gpus=3)
    world.running("b", "x", 2)
    world.running("a", "y", 1)
    chosen = policy(team("a", 1), team("b", 1), team("c", 1, lending="dont-lend"))

    teams = team_summaries(world.state, chosen)

    assert [(t.team, t.borrowed, t.lent) for t in teams] == [
        ("a", 0, 0), ("b", 1, 0), ("c", 0, 1)
    ]  # fmt: skip
    assert unassigned_summary(world.state, teams).used == 0
