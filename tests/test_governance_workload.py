"""Workload files for the simulated cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.governance import load_policy
from coordinator.governance.workload import (
    WorkloadError,
    load_workload,
    parse_duration,
    parse_workload,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

STREAM = """
seed: {seed}
cluster: {{nodes: 2}}
streams:
  - {{team: a, every: 1h, until: 2d, gpus: [1, 8], size: [1, 2], duration: [10m, 6h]}}
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("6h", 21600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1w", 604800.0),
    ],
)
def test_durations_are_seconds_or_unit_strings(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "", "h", True])
def test_a_malformed_duration_is_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_example_workload_loads_against_the_example_policy() -> None:
    policy = load_policy(EXAMPLES / "policy.yaml")
    workload = load_workload(EXAMPLES / "workload.yaml", policy)
    assert workload.cluster.nodes == 64
    assert len(workload.expand()) > 100


def test_a_task_without_a_name_gets_one_from_its_position() -> None:
    workload = parse_workload("cluster: {nodes: 1}\ntasks: [{team: a, gpus: 1, duration: 1h}]")
    assert [spec.name for spec in workload.expand()] == ["task-0"]


def test_streams_yield_the_same_tasks_for_the_same_seed() -> None:
    first = parse_workload(STREAM.format(seed=3)).expand()
    again = parse_workload(STREAM.format(seed=3)).expand()
    assert first == again


def test_streams_yield_other_tasks_for_another_seed() -> None:
    assert (
        parse_workload(STREAM.format(seed=3)).expand()
        != parse_workload(STREAM.format(seed=4)).expand()
    )


def test_stream_tasks_stay_within_their_window_and_ranges() -> None:
    tasks = parse_workload(STREAM.format(seed=1)).expand()
    assert tasks
    for spec in tasks:
        assert 0 <= spec.arrival < 2 * 86400
        assert 600 <= spec.duration <= 6 * 3600
        assert spec.gpus in (1, 8) and spec.size in (1, 2)


def test_expanded_tasks_come_in_arrival_order() -> None:
    arrivals = [spec.arrival for spec in parse_workload(STREAM.format(seed=1)).expand()]
    assert arrivals == sorted(arrivals)


def test_a_bad_field_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("cluster: {nodes: 1}\ntasks: [{team: a, gpus: 1, duration: soon}]\n")
    with pytest.raises(WorkloadError) as caught:
        load_workload(path)
    [problem] = caught.value.problems
    assert (caught.value.source, problem.field) == (str(path), "tasks[0].duration")


def test_an_unknown_key_in_a_workload_is_refused() -> None:
    with pytest.raises(WorkloadError) as caught:
        parse_workload("cluster: {nodes: 1, gpuPerNode: 8}")
    assert caught.value.problems[0].field == "cluster.gpuPerNode"
    assert "gpusPerNode" in caught.value.problems[0].reason


def test_a_stream_whose_durations_are_reversed_is_refused() -> None:
    text = (
        "cluster: {nodes: 1}\n"
        "streams: [{team: a, every: 1h, until: 1d, gpus: [1], duration: [2h, 1h]}]"
    )
    with pytest.raises(WorkloadError) as caught:
        parse_workload(text)
    assert caught.value.problems[0].field == "streams[0].duration"


def test_a_team_the_policy_does_not_know_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("cluster: {nodes: 1}\ntasks: [{team: ghosts, gpus: 1, duration: 1h}]\n")
    with pytest.raises(WorkloadError) as caught:
        load_workload(path, load_policy(EXAMPLES / "policy.yaml"))
    assert caught.value.problems[0].field == "tasks[0].team"


def test_a_fault_on_a_node_the_cluster_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("cluster: {nodes: 2}\nfaults: [{node: node-009, at: 1h, repair: 1h}]\n")
    with pytest.raises(WorkloadError) as caught:
        load_workload(path, load_policy(EXAMPLES / "policy.yaml"))
    assert caught.value.problems[0].field == "faults[0].node"
