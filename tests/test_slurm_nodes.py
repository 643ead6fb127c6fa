"""Slurm nodes as gpuwarden reads and marks them: the drain reason that carries its decision,
the facts the remediator reads, and the scontrol commands each mark needs. Pure, on JSON
captured from real Slurm 22.05 daemons (tests/data/slurm/capture.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.actuators import MarkFact, NodeMark
from coordinator.backends.slurm.nodes import (
    RebootMode,
    SlurmNode,
    SlurmReplyError,
    drain_reason,
    gres_gpus,
    node_facts,
    parse_reason,
    parse_sinfo,
    plan_mark_healthy,
    plan_mark_unhealthy,
)

DATA = Path(__file__).parent / "data" / "slurm"
FACT = MarkFact(reason="GPUFault", message="agent reports unhealthy, action reboot",
                id="3f2a9c1b7d6e5a40", at=1796228541.25, fault="XID 79 on GPU 2")  # fmt: skip
OURS = "gpuwarden: XID 79 on GPU 2 (pending-reboot) [fact:3f2a9c1b7d6e5a40@1796228541.250]"


def captured(name: str) -> dict[str, SlurmNode]:
    return {n.name: n for n in parse_sinfo((DATA / name).read_text())}


def idle(name: str = "node2") -> SlurmNode:
    return SlurmNode(name=name, state="idle", flags=frozenset(), reason="", gpus=8)


def drained(reason: str, *flags: str, state: str = "idle") -> SlurmNode:
    return SlurmNode(name="node2", state=state, flags=frozenset({"DRAIN", *flags}),
                     reason=reason, gpus=8)  # fmt: skip


# --- the reason ---------------------------------------------------------------------------


def test_the_drain_reason_names_the_fault_the_lifecycle_and_the_decision() -> None:
    assert drain_reason(NodeMark.PENDING_REBOOT, FACT) == OURS


def test_a_decision_that_names_no_fault_is_described_by_its_message() -> None:
    fact = MarkFact(reason="NodeMarkedForRecovery", message="came back on boot b2", id="f1",
                    at=10.0)  # fmt: skip
    assert drain_reason(NodeMark.UNSCHEDULABLE, fact) == (
        "gpuwarden: came back on boot b2 (unschedulable) [fact:f1@10.000]"
    )


def test_the_reason_is_one_short_line_whatever_the_message() -> None:
    fact = MarkFact(reason="GPUFault", message="line one\nline two " + "x" * 400, id="f1")
    reason = drain_reason(NodeMark.UNSCHEDULABLE, fact)
    assert "\n" not in reason
    assert len(reason) < 240
    assert parse_reason(reason) is not None


def test_the_decision_is_read_back_from_the_reason() -> None:
    ours = parse_reason(OURS)
    assert ours is not None
    assert (ours.mark, ours.fact_id, ours.at, ours.text) == (
        NodeMark.PENDING_REBOOT, FACT.id, FACT.at, "XID 79 on GPU 2"
    )


def test_what_slurm_appends_to_the_reason_does_not_hide_the_decision() -> None:
    ours = parse_reason(OURS + " : reboot issued")
    assert ours is not None
    assert (ours.fact_id, ours.suffix) == (FACT.id, ": reboot issued")


@pytest.mark.parametrize("reason", ["admin: fan replaced", "Not responding", "", "gpuwarden"])
def test_anyone_elses_reason_is_not_read_as_a_decision(reason: str) -> None:
    assert parse_reason(reason) is None


# --- sinfo --json ---------------------------------------------------------------------------


def test_four_idle_nodes_with_eight_gpus_each() -> None:
    nodes = captured("sinfo-idle.json")
    assert sorted(nodes) == ["node1", "node2", "node3", "node4"]
    assert {(n.state, n.drained, n.gpus) for n in nodes.values()} == {("idle", False, 8)}


def test_a_node_gpuwarden_drained_carries_its_mark_and_decision() -> None:
    facts = node_facts(captured("sinfo-drained.json")["node2"], "node2")
    assert facts.mark is NodeMark.PENDING_REBOOT
    assert facts.cordoned_by_us and facts.unschedulable
    assert facts.fact is not None and (facts.fact.id, facts.fact.at) == (FACT.id, FACT.at)


def test_a_node_an_administrator_drained_carries_no_mark_of_ours() -> None:
    facts = node_facts(captured("sinfo-drained.json")["node3"], "node3")
    assert (facts.mark, facts.cordoned_by_us, facts.fact) == (None, False, None)
    assert facts.unschedulable


def test_a_node_slurm_reports_down_and_not_responding_is_not_ready() -> None:
    node = captured("sinfo-drained.json")["node1"]
    assert (node.state, "NOT_RESPONDING" in node.flags) == ("down", True)
    assert node_facts(node, "node1").ready is False


def test_a_responding_node_is_ready() -> None:
    assert node_facts(captured("sinfo-idle.json")["node1"], "node1").ready is True


def test_a_node_whose_reboot_slurm_issued_is_still_ours() -> None:
    node = captured("sinfo-drained.json")["node4"]
    assert node.reboot_pending
    assert node_facts(node, "node4").mark is NodeMark.PENDING_REBOOT


def test_a_node_slurm_does_not_know_does_not_exist() -> None:
    assert node_facts(None, "gpu-9").exists is False


def test_facts_name_the_agents_node_and_count_the_gres_gpus() -> None:
    facts = node_facts(captured("sinfo-idle.json")["node1"], "gpu-a-001")
    assert (facts.name, facts.gpus) == ("gpu-a-001", 8)


def test_a_controller_that_does_not_answer_is_an_error_not_an_empty_cluster() -> None:
    with pytest.raises(SlurmReplyError, match="Unspecified error"):
        parse_sinfo((DATA / "sinfo-controller-down.json").read_text())


def test_output_that_is_not_json_is_an_error() -> None:
    with pytest.raises(SlurmReplyError, match="not JSON"):
        parse_sinfo("sinfo: error: something")


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [("gpu:8", 8), ("gpu:h100:8(S:0-1)", 8), ("gpu:a100:4,gpu:h100:4", 8),
     ("gpu:h100:4(S:0,1),nic:2", 4), ("gpu", 1), ("(null)", None), ("", None),
     ("nic:2", None)],
)  # fmt: skip
def test_gpus_are_counted_from_gres(gres: str, gpus: int | None) -> None:
    assert gres_gpus(gres) == gpus


# --- marking ----------------------------------------------------------------------------------


def test_a_mark_drains_the_node_with_the_reason() -> None:
    plan = plan_mark_unhealthy(idle(), NodeMark.PENDING_REBOOT, FACT)
    assert plan.commands == (("update", "nodename=node2", "state=DRAIN", f"reason={OURS}"),)


def test_the_same_decision_again_runs_nothing() -> None:
    assert plan_mark_unhealthy(drained(OURS), NodeMark.PENDING_REBOOT, FACT).commands == ()


def test_a_newer_decision_rewrites_the_reason() -> None:
    newer = MarkFact(reason="NodeMarkedForRecovery", message="escalated", id="f2", at=2e9,
                     fault="XID 79 on GPU 2")  # fmt: skip
    plan = plan_mark_unhealthy(drained(OURS), NodeMark.PENDING_REPLACEMENT, newer)
    assert plan.commands[0][-1] == (
        "reason=gpuwarden: XID 79 on GPU 2 (pending-replacement) [fact:f2@2000000000.000]"
    )


def test_an_administrators_drain_is_left_as_it_is() -> None:
    plan = plan_mark_unhealthy(drained("admin: fan"), NodeMark.UNSCHEDULABLE, FACT)
    assert plan.commands == ()
    assert "someone else" in plan.detail


def test_a_node_down_on_its_own_is_drained_so_it_stays_out_when_it_returns() -> None:
    down = SlurmNode("node2", "down", frozenset({"NOT_RESPONDING"}), "Not responding", 8)
    assert plan_mark_unhealthy(down, NodeMark.UNSCHEDULABLE, FACT).commands[0][2] == "state=DRAIN"


def test_reboot_is_asked_for_only_when_opted_in() -> None:
    plan = plan_mark_unhealthy(idle(), NodeMark.PENDING_REBOOT, FACT)
    assert [c[0] for c in plan.commands] == ["update"]


def test_opted_in_a_pending_reboot_asks_slurm_to_reboot_the_node_once() -> None:
    plan = plan_mark_unhealthy(idle(), NodeMark.PENDING_REBOOT, FACT, RebootMode.DOWN)
    assert plan.commands[1] == ("reboot", "ASAP", "nextstate=DOWN", f"reason={OURS}", "node2")
    asked = drained(OURS, "REBOOT_REQUESTED")
    assert plan_mark_unhealthy(asked, NodeMark.PENDING_REBOOT, FACT, RebootMode.DOWN).commands == ()


def test_a_node_slurm_rebooted_for_the_decision_is_not_rebooted_again() -> None:
    rebooted = SlurmNode("node2", "down", frozenset(), OURS + " : reboot complete", 8)
    plan = plan_mark_unhealthy(rebooted, NodeMark.PENDING_REBOOT, FACT, RebootMode.DOWN)
    assert plan.commands == ()


def test_other_marks_never_reboot() -> None:
    plan = plan_mark_unhealthy(idle(), NodeMark.UNSCHEDULABLE, FACT, RebootMode.RESUME)
    assert [c[0] for c in plan.commands] == ["update"]


# --- recovery ---------------------------------------------------------------------------------


def test_recovery_resumes_a_node_gpuwarden_drained() -> None:
    plan = plan_mark_healthy(drained(OURS))
    assert plan.commands == (("update", "nodename=node2", "state=RESUME"),)


def test_recovery_never_resumes_an_administrators_drain() -> None:
    plan = plan_mark_healthy(drained("admin: fan replaced"))
    assert plan.commands == ()
    assert "never resumes" in plan.detail


def test_recovery_of_a_node_in_service_runs_nothing() -> None:
    assert plan_mark_healthy(idle()).commands == ()


def test_recovery_cancels_a_reboot_not_yet_begun() -> None:
    plan = plan_mark_healthy(drained(OURS, "REBOOT_REQUESTED"))
    assert [c[0] for c in plan.commands] == ["cancel_reboot", "update"]


def test_recovery_resumes_a_node_left_down_by_our_reboot() -> None:
    rebooted = SlurmNode("node2", "down", frozenset(), OURS + " : reboot complete", 8)
    assert plan_mark_healthy(rebooted).commands[-1][-1] == "state=RESUME"


def test_recovery_leaves_a_node_down_on_its_own_to_slurm() -> None:
    down = SlurmNode("node2", "down", frozenset({"NOT_RESPONDING"}), "Not responding", 8)
    assert plan_mark_healthy(down).commands == ()
