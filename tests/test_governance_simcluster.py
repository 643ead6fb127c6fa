"""The simulated cluster: tasks run, checkpoint, get preempted and hit by faults, on a
virtual clock."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.governance import Policy, TaskState
from coordinator.governance.simcluster import SimCluster, SimEvent
from coordinator.governance.workload import Workload, WorkloadError, workload_from_mapping
from tests.governance_world import policy, team

HOUR = 3600.0


def workload(nodes: int = 1, **sections: Any) -> Workload:
    return workload_from_mapping({"cluster": {"nodes": nodes, "gpusPerNode": 8}, **sections})


def simulate(chosen: Policy, load: Workload) -> tuple[SimCluster, list[SimEvent]]:
    events: list[SimEvent] = []
    return SimCluster(chosen, load, on_event=events.append), events


def times_of(events: list[SimEvent], kind: str, subject: str) -> list[float]:
    return [e.time for e in events if e.kind == kind and e.subject == subject]


ONE_TEAM = policy(team("a", 16), requeue={"backoffSeconds": 60})


def test_a_task_finishes_after_its_duration() -> None:
    sim, events = simulate(
        ONE_TEAM,
        workload(tasks=[{"team": "a", "name": "t", "gpus": 8, "duration": "2h", "arrival": "1h"}]),
    )
    sim.run_until(10 * HOUR)
    assert times_of(events, "finish", "a/t") == [3 * HOUR]
    assert sim.report().finished == 1


def test_advance_steps_the_clock_without_finishing_early() -> None:
    sim, _ = simulate(
        ONE_TEAM, workload(tasks=[{"team": "a", "name": "t", "gpus": 8, "duration": "1h"}])
    )
    sim.advance(0.5 * HOUR)
    assert sim.now == 0.5 * HOUR
    assert sim.state.task("a/t").state is TaskState.RUNNING
    sim.advance(0.5 * HOUR)
    assert sim.report().finished == 1


def test_a_simulated_week_runs_on_the_virtual_clock() -> None:
    load = workload(
        nodes=2,
        streams=[
            {"team": "a", "every": "30m", "until": "7d", "gpus": [1, 8], "duration": ["10m", "3h"]}
        ],
    )
    sim, _ = simulate(ONE_TEAM, load)
    sim.run_until(7 * 24 * HOUR)
    report = sim.report()
    assert sim.now == 7 * 24 * HOUR
    assert report.finished > 200


def test_a_node_fault_loses_the_work_since_the_last_checkpoint() -> None:
    load = workload(
        nodes=2,
        tasks=[
            {"team": "a", "name": "t", "gpus": 8, "duration": "10h", "checkpointInterval": "1h"}
        ],
        faults=[{"node": "node-000", "at": "2.5h", "repair": "1h"}],
    )
    sim, _ = simulate(ONE_TEAM, load)
    sim.run_until(24 * HOUR)
    assert sim.report().lost_fault_gpu_s == pytest.approx(8 * 0.5 * HOUR)


def test_a_requeued_task_resumes_from_its_checkpoint_after_its_backoff() -> None:
    load = workload(
        nodes=2,
        tasks=[
            {"team": "a", "name": "t", "gpus": 8, "duration": "10h", "checkpointInterval": "1h"}
        ],
        faults=[{"node": "node-000", "at": "2.5h", "repair": "1h"}],
    )
    sim, events = simulate(ONE_TEAM, load)
    sim.run_until(24 * HOUR)
    # 2 h saved of 10 h: 8 h more on node-001, after a 60 s backoff
    assert times_of(events, "finish", "a/t") == [pytest.approx(2.5 * HOUR + 60 + 8 * HOUR)]
    assert sim.report().fault_requeues == 1


def test_a_task_out_of_requeues_fails() -> None:
    load = workload(
        tasks=[{"team": "a", "name": "t", "gpus": 8, "duration": "10h", "maxRequeues": 0}],
        faults=[{"node": "node-000", "at": "1h", "repair": "1h"}],
    )
    sim, events = simulate(ONE_TEAM, load)
    sim.run_until(24 * HOUR)
    assert times_of(events, "fail", "a/t") == [HOUR]
    assert sim.report().failed == 1


def test_a_down_node_is_out_of_capacity_until_repaired() -> None:
    load = workload(nodes=2, faults=[{"node": "node-001", "at": "1h", "repair": "2h"}])
    sim, _ = simulate(ONE_TEAM, load)
    sim.run_until(2 * HOUR)
    assert sim.state.capacity.healthy_gpus == 8
    assert [node.up for node in sim.nodes()] == [True, False]
    sim.run_until(3 * HOUR)
    assert sim.state.capacity.healthy_gpus == 16


LENDING = policy(team("a", 4, limit=100), team("b", 4), preemption={"defaultGraceSeconds": 0})


def reclaim_workload(checkpoint_on_preempt: bool) -> Workload:
    return workload(
        tasks=[
            {
                "team": "a",
                "name": "big",
                "gpus": 8,
                "duration": "10h",
                "checkpointInterval": "1h",
                "checkpointOnPreempt": checkpoint_on_preempt,
            },
            {"team": "b", "name": "owner", "gpus": 4, "duration": "1h", "arrival": "1.5h"},
        ]
    )


def test_a_lender_reclaiming_its_gpus_costs_the_borrower_its_unsaved_work() -> None:
    sim, events = simulate(LENDING, reclaim_workload(checkpoint_on_preempt=False))
    sim.run_until(24 * HOUR)
    report = sim.report()
    assert times_of(events, "preempt", "a/big") == [1.5 * HOUR]
    assert report.preemptions == 1
    assert report.lost_preempt_gpu_s == pytest.approx(8 * 0.5 * HOUR)


def test_a_task_that_saves_in_its_grace_period_loses_nothing_to_preemption() -> None:
    sim, _ = simulate(LENDING, reclaim_workload(checkpoint_on_preempt=True))
    sim.run_until(24 * HOUR)
    assert sim.report().lost_preempt_gpu_s == 0


def test_the_preempted_task_runs_again_once_the_lender_is_done() -> None:
    sim, events = simulate(LENDING, reclaim_workload(checkpoint_on_preempt=False))
    sim.run_until(24 * HOUR)
    # back at 2.5 h from its 1 h checkpoint: 9 h more
    assert times_of(events, "finish", "a/big") == [pytest.approx(2.5 * HOUR + 9 * HOUR)]


def test_the_same_seed_gives_the_same_run() -> None:
    load = workload(
        nodes=4,
        streams=[
            {
                "team": "a",
                "every": "20m",
                "until": "2d",
                "gpus": [2, 8],
                "size": [1, 2],
                "duration": ["10m", "8h"],
                "checkpointInterval": "30m",
            }
        ],
        randomFaults={"mtbf": "48h", "repair": "2h"},
        seed=11,
    )
    first, second = SimCluster(ONE_TEAM, load), SimCluster(ONE_TEAM, load)
    first.run_until(48 * HOUR)
    second.run_until(48 * HOUR)
    assert first.report() == second.report()
    assert first.report().fault_requeues > 0


def test_a_live_policy_change_returns_the_diff_and_takes_effect() -> None:
    load = workload(tasks=[{"team": "a", "name": "t", "gpus": 8, "duration": "1h"}])
    sim = SimCluster(policy(team("a", 0, lending="dont-lend")), load)
    sim.advance(60)
    assert sim.state.task("a/t").state is TaskState.PENDING
    changes = sim.set_policy(policy(team("a", 8, lending="dont-lend")))
    assert [str(c) for c in changes] == ["teams[a].quota.gpus: 0 -> 8"]
    assert sim.state.task("a/t").state is TaskState.RUNNING


def test_fail_node_takes_a_node_down_on_demand() -> None:
    sim = SimCluster(ONE_TEAM, workload(nodes=2))
    sim.fail_node("node-000", repair_s=HOUR)
    assert sim.state.capacity.healthy_gpus == 8
    sim.advance(HOUR)
    assert sim.state.capacity.healthy_gpus == 16


def test_a_workload_naming_an_unknown_team_is_refused() -> None:
    with pytest.raises(WorkloadError, match="no team 'ghosts'"):
        SimCluster(ONE_TEAM, workload(tasks=[{"team": "ghosts", "gpus": 1, "duration": 60}]))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Policy, Workload]:
    teams = [
        team(
            name,
            draw(st.integers(0, 16)),
            lending=draw(st.sampled_from(["lend-and-borrow", "lend", "dont-lend"])),
            limit=draw(st.integers(1, 300)),
            weight=draw(st.integers(0, 100)),
            preempt=draw(st.booleans()),
        )
        for name in ("a", "b", "c")
    ]
    chosen = policy(*teams, preemption={"defaultGraceSeconds": draw(st.sampled_from([0, 60]))})
    streams = [
        {
            "team": name,
            "priorityClass": draw(st.sampled_from(["critical", "high", "mid", "low"])),
            "every": draw(st.sampled_from(["10m", "30m", "1h"])),
            "until": "12h",
            "gpus": [1, 4, 8],
            "size": [1, 2],
            "duration": ["10m", "4h"],
            "checkpointInterval": "20m",
        }
        for name in ("a", "b", "c")
    ]
    load = workload(
        nodes=3,
        streams=streams,
        randomFaults={"mtbf": "10h", "repair": "1h"},
        seed=draw(st.integers(0, 1000)),
    )
    return chosen, load


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_simulation_keeps_every_team_and_node_within_bounds(
    scenario: tuple[Policy, Workload],
) -> None:
    chosen, load = scenario
    sim = SimCluster(chosen, load)
    limits = {t.namespace: t.quota.gpus + t.borrow_limit_gpus for t in chosen.teams}
    for _ in range(48):
        sim.advance(900)
        used: dict[str, int] = {}
        for task in sim.state.tasks.values():
            if task.state in (TaskState.ADMITTED, TaskState.RUNNING):
                used[task.namespace] = used.get(task.namespace, 0) + task.gpus
        assert all(used[ns] <= limits[ns] for ns in used)
        for node in sim.nodes():
            assert node.used <= node.gpus
            assert node.up or node.used == 0
