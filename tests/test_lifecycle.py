from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.actuators import NodeFacts, NodeMark
from coordinator.lifecycle import (
    FAULT_STATES,
    OUT_OF_SERVICE,
    Lifecycle,
    LifecycleConfig,
    Reason,
    decide,
)
from coordinator.model import ClusterModel, NodeRecord
from gpuwarden_common.health import Action, Finding, Health, Severity
from tests.test_model import state

CONFIG = LifecycleConfig(offline_grace_s=60, recovery_stable_s=300, refault_window_s=24 * 3600)
NOW = 100_000.0
READY = NodeFacts(name="gpu-1", ready=True)
NOT_READY = NodeFacts(name="gpu-1", ready=False)

_BASE = NodeRecord(
    name="gpu-1",
    agent_online=True,
    agent_boot_id="boot-a",
    last_seen=NOW,
    boot_id="boot-a",
    last_state_at=NOW,
    health=Health.HEALTHY,
    action=Action.NONE,
    healthy_since=NOW - 1000,
)


def node(**changes: Any) -> NodeRecord:
    return replace(_BASE, **changes)


def out(lifecycle: Lifecycle, **changes: Any) -> NodeRecord:
    """A node taken out of service on boot-a, still on boot-a."""
    return node(lifecycle=lifecycle, out_boot_id="boot-a", **changes)


def unhealthy(action: Action, **changes: Any) -> NodeRecord:
    return node(health=Health.UNHEALTHY, action=action, healthy_since=None, **changes)


# -- in service ---------------------------------------------------------------------------


def test_a_healthy_node_that_keeps_reporting_stays_as_it_is() -> None:
    assert decide(node(), READY, NOW, CONFIG) is None


def test_an_agent_offline_status_makes_a_healthy_node_suspect_at_once() -> None:
    t = decide(node(agent_online=False, offline_since=NOW), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.reason) == (Lifecycle.SUSPECT, Reason.AGENT_SILENT)


def test_heartbeats_missed_beyond_the_grace_make_a_healthy_node_suspect() -> None:
    t = decide(node(last_seen=NOW - 61), READY, NOW, CONFIG)
    assert t is not None
    assert t.target is Lifecycle.SUSPECT


def test_heartbeats_missed_within_the_grace_change_nothing() -> None:
    assert decide(node(last_seen=NOW - 59), READY, NOW, CONFIG) is None


def test_becoming_suspect_touches_nothing_on_the_cluster() -> None:
    t = decide(node(last_seen=NOW - 61), READY, NOW, CONFIG)
    assert t is not None
    assert t.mark is None
    assert not t.removes_from_service


def test_a_suspect_node_whose_agent_reports_again_is_healthy_without_a_cluster_change() -> None:
    t = decide(node(lifecycle=Lifecycle.SUSPECT), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.reason, t.mark) == (Lifecycle.HEALTHY, Reason.AGENT_BACK, None)


@pytest.mark.parametrize(
    "facts",
    [READY, NodeFacts(name="gpu-1", ready=None), None],
    ids=["ready", "ready-unknown", "no-cluster"],
)
def test_silence_alone_never_takes_a_node_out_while_ready_is_not_false(
    facts: NodeFacts | None,
) -> None:
    silent = node(lifecycle=Lifecycle.SUSPECT, last_seen=NOW - 3600)
    assert decide(silent, facts, NOW, CONFIG) is None


def test_silence_past_the_grace_with_ready_false_makes_the_node_unschedulable() -> None:
    silent = node(lifecycle=Lifecycle.SUSPECT, last_seen=NOW - 61)
    t = decide(silent, NOT_READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark) == (Lifecycle.UNSCHEDULABLE, NodeMark.UNSCHEDULABLE)
    assert t.reason is Reason.SILENT_NOT_READY
    assert t.gated


def test_an_offline_agent_with_ready_false_waits_out_the_grace_from_the_offline_status() -> None:
    silent = node(
        lifecycle=Lifecycle.SUSPECT, agent_online=False, offline_since=NOW - 30, last_seen=NOW - 40
    )
    assert decide(silent, NOT_READY, NOW, CONFIG) is None


@given(
    silence=st.floats(0, 1e6),
    offline=st.booleans(),
    health=st.sampled_from([Health.HEALTHY, Health.DEGRADED, Health.UNKNOWN]),
    action=st.sampled_from(list(Action)),
    state_=st.sampled_from([Lifecycle.HEALTHY, Lifecycle.SUSPECT]),
    ready=st.sampled_from([True, None]),
)
def test_property_silence_without_a_fault_never_removes_a_node_unless_ready_is_false(
    silence: float,
    offline: bool,
    health: Health,
    action: Action,
    state_: Lifecycle,
    ready: bool | None,
) -> None:
    record = node(
        lifecycle=state_,
        last_seen=NOW - silence,
        agent_online=not offline,
        offline_since=NOW - silence if offline else None,
        health=health,
        action=action,
    )
    t = decide(record, NodeFacts(name="gpu-1", ready=ready), NOW, CONFIG)
    assert t is None or t.target not in OUT_OF_SERVICE


# -- faults -------------------------------------------------------------------------------


def test_reboot_action_makes_the_node_pending_reboot() -> None:
    t = decide(unhealthy(Action.REBOOT), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark) == (Lifecycle.PENDING_REBOOT, NodeMark.PENDING_REBOOT)
    assert t.reason is Reason.FAULT_REBOOT


def test_replace_action_makes_the_node_pending_replacement() -> None:
    t = decide(unhealthy(Action.REPLACE), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark) == (Lifecycle.PENDING_REPLACEMENT, NodeMark.PENDING_REPLACEMENT)


@pytest.mark.parametrize("action", [Action.RESET_GPU, Action.RESTART_APP, Action.NONE])
def test_an_unhealthy_node_with_a_weaker_action_becomes_unschedulable(action: Action) -> None:
    t = decide(unhealthy(action), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark) == (Lifecycle.UNSCHEDULABLE, NodeMark.UNSCHEDULABLE)


@pytest.mark.parametrize("action", list(Action))
def test_a_degraded_node_stays_in_service_whatever_the_suggested_action(action: Action) -> None:
    assert decide(node(health=Health.DEGRADED, action=action), READY, NOW, CONFIG) is None


def test_unknown_health_takes_no_node_out() -> None:
    assert decide(node(health=Health.UNKNOWN, action=Action.REBOOT), READY, NOW, CONFIG) is None


def test_a_fault_on_a_silent_node_is_acted_on_without_waiting_for_ready() -> None:
    record = unhealthy(Action.REBOOT, agent_online=False, offline_since=NOW)
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert t.target is Lifecycle.PENDING_REBOOT


def test_a_fault_that_takes_a_node_out_must_pass_the_safety_gate() -> None:
    t = decide(unhealthy(Action.REBOOT), READY, NOW, CONFIG)
    assert t is not None
    assert t.removes_from_service
    assert t.gated


def test_a_node_already_out_escalates_to_a_stronger_fault_on_the_same_boot() -> None:
    record = out(Lifecycle.UNSCHEDULABLE, health=Health.UNHEALTHY, action=Action.REPLACE)
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.reason) == (Lifecycle.PENDING_REPLACEMENT, Reason.FAULT_ESCALATED)
    assert not t.gated


def test_a_node_already_out_never_weakens_on_the_same_boot() -> None:
    record = out(Lifecycle.PENDING_REPLACEMENT, health=Health.UNHEALTHY, action=Action.REBOOT)
    assert decide(record, READY, NOW, CONFIG) is None


def test_a_node_out_that_reports_healthy_on_the_same_boot_stays_out() -> None:
    for lifecycle in FAULT_STATES:
        assert decide(out(lifecycle), READY, NOW, CONFIG) is None


def test_a_fault_within_24h_of_a_reboot_on_the_new_boot_goes_to_pending_replacement() -> None:
    record = unhealthy(
        Action.RESET_GPU,
        boot_id="boot-b",
        last_reboot_remediation_at=NOW - 23 * 3600,
        reboot_remediation_boot_id="boot-a",
    )
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.reason) == (Lifecycle.PENDING_REPLACEMENT, Reason.REFAULT_AFTER_REBOOT)


def test_a_fault_more_than_24h_after_a_reboot_is_an_ordinary_fault() -> None:
    record = unhealthy(
        Action.REBOOT,
        boot_id="boot-b",
        last_reboot_remediation_at=NOW - 25 * 3600,
        reboot_remediation_boot_id="boot-a",
    )
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert t.target is Lifecycle.PENDING_REBOOT


def test_a_pending_reboot_node_faulting_again_on_its_new_boot_goes_to_pending_replacement() -> None:
    record = unhealthy(
        Action.REBOOT,
        lifecycle=Lifecycle.PENDING_REBOOT,
        out_boot_id="boot-a",
        boot_id="boot-b",
        last_reboot_remediation_at=NOW - 600,
        reboot_remediation_boot_id="boot-a",
    )
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert t.target is Lifecycle.PENDING_REPLACEMENT


def test_a_node_faulting_again_on_a_new_boot_re_enters_its_state_to_demand_another_boot() -> None:
    record = unhealthy(
        Action.RESET_GPU, lifecycle=Lifecycle.UNSCHEDULABLE, out_boot_id="boot-a", boot_id="b"
    )
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert (t.source, t.target) == (Lifecycle.UNSCHEDULABLE, Lifecycle.UNSCHEDULABLE)


# -- recovery -----------------------------------------------------------------------------


def test_a_node_out_that_comes_back_on_a_new_boot_starts_recovering_still_cordoned() -> None:
    t = decide(out(Lifecycle.PENDING_REBOOT, boot_id="boot-b"), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark) == (Lifecycle.RECOVERING, NodeMark.UNSCHEDULABLE)
    assert t.reason is Reason.NEW_BOOT


def test_a_recovering_node_healthy_for_recovery_stable_s_returns_to_service() -> None:
    record = out(Lifecycle.RECOVERING, boot_id="boot-b", healthy_since=NOW - 300)
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark, t.reason) == (
        Lifecycle.HEALTHY,
        NodeMark.SCHEDULABLE,
        Reason.RECOVERED,
    )
    assert t.returns_to_service


def test_a_recovering_node_short_of_recovery_stable_s_stays_recovering() -> None:
    record = out(Lifecycle.RECOVERING, boot_id="boot-b", healthy_since=NOW - 299)
    assert decide(record, READY, NOW, CONFIG) is None


def test_a_recovering_node_whose_agent_went_silent_does_not_return() -> None:
    record = out(
        Lifecycle.RECOVERING,
        boot_id="boot-b",
        healthy_since=NOW - 400,
        agent_online=False,
        offline_since=NOW,
    )
    assert decide(record, READY, NOW, CONFIG) is None


def test_a_recovering_node_that_faults_goes_back_out() -> None:
    record = out(
        Lifecycle.RECOVERING,
        boot_id="boot-b",
        health=Health.UNHEALTHY,
        action=Action.RESET_GPU,
        healthy_since=None,
    )
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert t.target is Lifecycle.UNSCHEDULABLE
    assert not t.gated


def test_returning_to_service_is_not_gated() -> None:
    record = out(Lifecycle.RECOVERING, boot_id="boot-b", healthy_since=NOW - 300)
    t = decide(record, READY, NOW, CONFIG)
    assert t is not None
    assert not t.gated


# -- recovery through the model: the clock is kept by the reports ----------------------------


class Fleet:
    """One node, driven by state reports, with every decision applied at once."""

    def __init__(self) -> None:
        self.model = ClusterModel(max_report_gap_s=CONFIG.offline_grace_s)

    def report(self, now: float, boot_id: str, health: Health = Health.HEALTHY) -> Lifecycle:
        record = self.model.node("gpu-1")
        seq = record.last_seq + 1 if record is not None else 1
        action = Action.REBOOT if health is Health.UNHEALTHY else Action.NONE
        self.model.apply_state(state(seq=seq, boot_id=boot_id, health=health, action=action), now)
        return self.settle(now)

    def settle(self, now: float) -> Lifecycle:
        for _ in range(5):
            record = self.model.node("gpu-1")
            assert record is not None
            transition = decide(record, READY, now, CONFIG)
            if transition is None:
                return record.lifecycle
            self.model.apply_transition(transition, now)
        raise AssertionError("decisions did not settle")


def test_healthy_reports_on_the_same_boot_never_return_a_node_to_service() -> None:
    fleet = Fleet()
    assert fleet.report(0, "boot-a", Health.UNHEALTHY) is Lifecycle.PENDING_REBOOT
    for t in range(10, 2000, 10):
        assert fleet.report(t, "boot-a") is Lifecycle.PENDING_REBOOT


def test_recovery_takes_a_new_boot_and_recovery_stable_s_of_healthy_reports() -> None:
    fleet = Fleet()
    fleet.report(0, "boot-a", Health.UNHEALTHY)
    assert fleet.report(100, "boot-b") is Lifecycle.RECOVERING
    for t in range(110, 400, 10):
        assert fleet.report(t, "boot-b") is Lifecycle.RECOVERING
    assert fleet.report(400, "boot-b") is Lifecycle.HEALTHY


def test_a_single_unknown_report_restarts_the_recovery_clock() -> None:
    fleet = Fleet()
    fleet.report(0, "boot-a", Health.UNHEALTHY)
    fleet.report(100, "boot-b")
    fleet.report(200, "boot-b", Health.UNKNOWN)
    for t in range(210, 500, 10):
        assert fleet.report(t, "boot-b") is Lifecycle.RECOVERING
    assert fleet.report(510, "boot-b") is Lifecycle.HEALTHY


def test_a_gap_in_reports_restarts_the_recovery_clock() -> None:
    fleet = Fleet()
    fleet.report(0, "boot-a", Health.UNHEALTHY)
    fleet.report(100, "boot-b")
    assert fleet.report(400, "boot-b") is Lifecycle.RECOVERING


def test_an_unhealthy_report_while_recovering_takes_the_node_out_again() -> None:
    fleet = Fleet()
    fleet.report(0, "boot-a", Health.UNHEALTHY)
    fleet.report(100, "boot-b")
    assert fleet.report(200, "boot-b", Health.UNHEALTHY) is Lifecycle.PENDING_REPLACEMENT


# -- operator -----------------------------------------------------------------------------


def test_an_operator_hold_takes_an_in_service_node_out_to_held() -> None:
    t = decide(node(hold=True), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark, t.reason) == (
        Lifecycle.HELD,
        NodeMark.UNSCHEDULABLE,
        Reason.OPERATOR_HOLD,
    )
    assert not t.gated


@pytest.mark.parametrize(
    "record",
    [
        node(lifecycle=Lifecycle.HELD, hold=True, health=Health.UNHEALTHY, action=Action.REBOOT),
        node(lifecycle=Lifecycle.HELD, hold=True, boot_id="boot-b", healthy_since=NOW - 9999),
    ],
    ids=["faulty", "healthy-on-new-boot"],
)
def test_a_held_node_stays_held_until_cleared(record: NodeRecord) -> None:
    assert decide(record, READY, NOW, CONFIG) is None


def test_a_hold_keeps_a_recovering_node_from_returning() -> None:
    record = out(Lifecycle.RECOVERING, boot_id="boot-b", healthy_since=NOW - 9999, hold=True)
    assert decide(record, READY, NOW, CONFIG) is None


@pytest.mark.parametrize("lifecycle", sorted(OUT_OF_SERVICE))
def test_an_operator_clear_returns_any_node_out_to_service_at_once(lifecycle: Lifecycle) -> None:
    t = decide(out(lifecycle, clear_requested=True), READY, NOW, CONFIG)
    assert t is not None
    assert (t.target, t.mark, t.reason) == (
        Lifecycle.HEALTHY,
        NodeMark.SCHEDULABLE,
        Reason.OPERATOR_CLEAR,
    )
    assert not t.gated


def test_config_rejects_a_non_positive_duration() -> None:
    with pytest.raises(ValueError, match="recovery_stable_s"):
        LifecycleConfig(recovery_stable_s=0)


# -- reasons an operator reads ------------------------------------------------------------


def test_a_node_out_for_an_xid_gives_the_xid_the_gpu_and_the_time_as_its_reason() -> None:
    at_1402 = 1_767_276_120.0  # 2026-01-01 14:02:00 UTC
    xid = Finding(check="xid", severity=Severity.CRITICAL, code="XID-79",
                  message="XID 79: GPU has fallen off the bus", action=Action.REBOOT,
                  gpu_index=2)  # fmt: skip
    model = ClusterModel()
    model.apply_state(state(health=Health.UNHEALTHY, action=Action.REBOOT, findings=[xid]),
                      now=at_1402)  # fmt: skip
    record = model.node("gpu-1")
    assert record is not None
    t = decide(record, READY, at_1402 + 1, CONFIG)
    assert t is not None and t.target is Lifecycle.PENDING_REBOOT
    assert t.message == "XID 79 on GPU 2 at 14:02 UTC"
