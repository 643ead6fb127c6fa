"""plan_restore: the newer of the audit log and the cluster's record wins, node by node."""

from __future__ import annotations

from typing import Any

from coordinator.actuators import MarkFact, NodeFacts, NodeMark
from coordinator.audit import AuditKind, AuditRecord
from coordinator.lifecycle import Lifecycle
from coordinator.restore import RESTORED_MESSAGE, plan_restore

NOW = 10_000.0


def decision(node: str, target: str, ts: float, **details: Any) -> AuditRecord:
    return AuditRecord(
        id=int(ts), kind=AuditKind.DECISION, actor="coord-a", node=node, action=target,
        reason="fault-needs-reboot: agent reports unhealthy, action reboot", ts=ts,
        details={"target": target, "boot_id": "boot-1", **details},
    )  # fmt: skip


def marked(node: str, mark: NodeMark | None, fact: MarkFact | None = None) -> NodeFacts:
    return NodeFacts(name=node, mark=mark, fact=fact)


def test_a_decision_the_cluster_never_saw_is_restored_and_reapplied() -> None:
    logged = decision("gpu-1", "pending-reboot", 100.0, fact_id="f1", message="XID 79 on GPU 2",
                      fact_reason="NodeMarkedForRecovery")  # fmt: skip

    [item] = plan_restore({"gpu-1": logged}, {"gpu-1": marked("gpu-1", None)}, NOW)

    assert (item.lifecycle, item.mark, item.out_boot_id) == (
        Lifecycle.PENDING_REBOOT, NodeMark.PENDING_REBOOT, "boot-1"
    )  # fmt: skip
    assert (item.fact.id, item.fact.message) == ("f1", "XID 79 on GPU 2")


def test_marks_another_leader_made_later_win_over_this_replicas_older_log() -> None:
    logged = decision("gpu-1", "unschedulable", 100.0, fact_id="f1")
    newer = MarkFact("NodeMarkedForRecovery", "XID 79 again", id="f2", at=200.0)

    [item] = plan_restore(
        {"gpu-1": logged}, {"gpu-1": marked("gpu-1", NodeMark.PENDING_REPLACEMENT, newer)}, NOW
    )

    assert (item.lifecycle, item.fact.id) == (Lifecycle.PENDING_REPLACEMENT, "f2")


def test_a_node_another_leader_returned_to_service_stays_in_service() -> None:
    logged = decision("gpu-1", "pending-reboot", 100.0, fact_id="f1")
    recovered = MarkFact("NodeRecovered", "healthy on boot b2", id="f2", at=300.0)

    plan = plan_restore(
        {"gpu-1": logged}, {"gpu-1": marked("gpu-1", NodeMark.SCHEDULABLE, recovered)}, NOW
    )

    assert plan == []


def test_the_log_wins_over_the_same_decision_seen_on_the_cluster() -> None:
    logged = decision("gpu-1", "pending-reboot", 100.0, fact_id="f1")
    same = MarkFact("NodeMarkedForRecovery", "x", id="f1", at=100.0)

    [item] = plan_restore(
        {"gpu-1": logged}, {"gpu-1": marked("gpu-1", NodeMark.PENDING_REBOOT, same)}, NOW
    )

    assert item.out_boot_id == "boot-1"  # only the log knows the boot


def test_marks_without_a_recorded_decision_are_kept_when_the_log_says_in_service() -> None:
    logged = decision("gpu-1", "healthy", 100.0)

    [item] = plan_restore(
        {"gpu-1": logged}, {"gpu-1": marked("gpu-1", NodeMark.UNSCHEDULABLE)}, NOW
    )

    assert item.lifecycle is Lifecycle.UNSCHEDULABLE


def test_a_recovery_newer_than_the_marks_left_on_the_cluster_lifts_them() -> None:
    stale = MarkFact("GPUFault", "ECC", id="f1", at=100.0)
    logged = decision("gpu-1", "healthy", 200.0, fact_id="f2", fact_reason="NodeRecovered")

    [item] = plan_restore(
        {"gpu-1": logged}, {"gpu-1": marked("gpu-1", NodeMark.UNSCHEDULABLE, stale)}, NOW
    )

    assert (item.lifecycle, item.mark, item.fact.id) == (
        Lifecycle.HEALTHY, NodeMark.SCHEDULABLE, "f2"
    )  # fmt: skip


def test_marks_found_only_on_the_cluster_are_restored_with_their_own_fact() -> None:
    fact = MarkFact("GPUFault", "XID 48", id="f9", at=50.0)

    [item] = plan_restore({}, {"gpu-1": marked("gpu-1", NodeMark.UNSCHEDULABLE, fact)}, NOW)

    assert (item.lifecycle, item.fact, item.since) == (Lifecycle.UNSCHEDULABLE, fact, 50.0)


def test_a_hand_made_mark_gets_a_fact_that_says_where_it_came_from() -> None:
    [item] = plan_restore({}, {"gpu-1": marked("gpu-1", NodeMark.PENDING_REBOOT)}, NOW)

    assert item.fact.message == RESTORED_MESSAGE
