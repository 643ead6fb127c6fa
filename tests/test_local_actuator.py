from __future__ import annotations

from pathlib import Path

from coordinator.actuators import MarkFact, NodeMark
from coordinator.backends.local.actuator import LocalActuator


async def test_marking_twice_changes_nothing_the_second_time(tmp_path: Path) -> None:
    act = LocalActuator(tmp_path / "marks.json")
    first = await act.mark_unhealthy("n1", NodeMark.PENDING_REBOOT, MarkFact("GPUFault", "XID 79"))
    second = await act.mark_unhealthy("n1", NodeMark.PENDING_REBOOT, MarkFact("GPUFault", "XID 79"))
    assert (first.changed, second.changed) == (True, False)


async def test_marks_survive_a_coordinator_restart(tmp_path: Path) -> None:
    await LocalActuator(tmp_path / "m.json").mark_unhealthy(
        "n1", NodeMark.PENDING_REPLACEMENT, MarkFact("GPUFault", "row remap failure")
    )
    again = LocalActuator(tmp_path / "m.json")
    assert [f.mark for f in await again.list_marked()] == [NodeMark.PENDING_REPLACEMENT]


async def test_the_decision_behind_a_mark_survives_a_restart(tmp_path: Path) -> None:
    fact = MarkFact("GPUFault", "XID 79 on GPU 2")
    await LocalActuator(tmp_path / "m.json").mark_unhealthy("n1", NodeMark.UNSCHEDULABLE, fact)

    [facts] = await LocalActuator(tmp_path / "m.json").list_marked()

    assert facts.fact == fact


async def test_marks_written_before_facts_existed_still_load(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text('{"n1": "UnschedulablePendingReboot"}')

    [facts] = await LocalActuator(tmp_path / "m.json").list_marked()

    assert (facts.mark, facts.fact) == (NodeMark.PENDING_REBOOT, None)


async def test_without_a_cluster_there_is_no_node_inventory() -> None:
    assert await LocalActuator().list_nodes() is None


async def test_marking_healthy_removes_the_mark_once(tmp_path: Path) -> None:
    act = LocalActuator(tmp_path / "m.json")
    await act.mark_unhealthy("n1", NodeMark.UNSCHEDULABLE, MarkFact("GPUFault", "x"))
    assert (await act.mark_healthy("n1", MarkFact("NodeRecovered", "ok"))).changed
    assert not (await act.mark_healthy("n1", MarkFact("NodeRecovered", "ok"))).changed
    assert await act.list_marked() == []


async def test_silence_alone_can_never_look_like_a_dead_node_without_a_cluster() -> None:
    facts = await LocalActuator().node_facts("n1")
    assert facts.ready is None
