from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.actuators import NodeFacts, NodeMark
from coordinator.lifecycle import Lifecycle, LifecycleConfig, Reason, Transition, decide
from coordinator.model import ClusterModel
from coordinator.safety import (
    Allow,
    Deny,
    DenyReason,
    MaxUnhealthy,
    SafetyGate,
    mass_silence,
)
from gpuwarden_common.health import Action, Health
from tests.test_model import state, status

CONFIG = LifecycleConfig(offline_grace_s=60, recovery_stable_s=300)


def allowed(result: Allow | Deny) -> bool:
    return isinstance(result, Allow)


def denied(result: Allow | Deny) -> Deny:
    assert isinstance(result, Deny), result
    return result


# -- --max-unhealthy ------------------------------------------------------------------------


def test_max_unhealthy_percent_form_is_a_share_of_the_fleet() -> None:
    assert MaxUnhealthy.parse("10%").limit(250) == 25


def test_max_unhealthy_count_form_is_a_number_of_nodes() -> None:
    assert MaxUnhealthy.parse("3").limit(250) == 3


def test_max_unhealthy_percent_rounds_down() -> None:
    assert MaxUnhealthy.parse("10%").limit(19) == 1


@pytest.mark.parametrize("text", ["", "ten", "-1", "10 %%", "1.5", "150%", "%"])
def test_max_unhealthy_rejects_other_forms_saying_what_it_expects(text: str) -> None:
    with pytest.raises(ValueError, match=r"--max-unhealthy .*(count|percentage)"):
        MaxUnhealthy.parse(text)


def test_rate_below_one_per_minute_is_rejected() -> None:
    with pytest.raises(ValueError, match="rate_per_minute"):
        SafetyGate("10%", rate_per_minute=0)


# -- the gate -----------------------------------------------------------------------------


def test_remediation_within_max_unhealthy_is_allowed() -> None:
    gate = SafetyGate("3", rate_per_minute=100)
    assert allowed(gate.allow("n1", nodes_out_now=2, total_nodes=100, now=0.0))


def test_remediation_that_would_exceed_a_count_is_denied() -> None:
    gate = SafetyGate("3", rate_per_minute=100)
    result = denied(gate.allow("n1", nodes_out_now=3, total_nodes=100, now=0.0))
    assert result.reason is DenyReason.MAX_UNHEALTHY
    assert "--max-unhealthy 3" in result.message


def test_remediation_that_would_exceed_a_percentage_is_denied() -> None:
    gate = SafetyGate("10%", rate_per_minute=100)
    assert allowed(gate.allow("n1", nodes_out_now=9, total_nodes=100, now=0.0))
    assert denied(gate.allow("n2", nodes_out_now=10, total_nodes=100, now=0.0)).reason is (
        DenyReason.MAX_UNHEALTHY
    )


def test_a_pause_is_reported_once_not_once_per_node() -> None:
    gate = SafetyGate("1", rate_per_minute=100)
    results = [denied(gate.allow(f"n{i}", 1, 100, now=float(i))) for i in range(20)]
    assert [r.new_pause for r in results].count(True) == 1
    assert results[0].new_pause
    assert gate.paused is not None


def test_review_ends_a_pause_once_its_cause_clears() -> None:
    gate = SafetyGate("1", rate_per_minute=100)
    gate.allow("n1", 1, 100, now=0.0)
    assert gate.review(nodes_out_now=1, total_nodes=100, now=1.0) is None
    ended = gate.review(nodes_out_now=0, total_nodes=100, now=2.0)
    assert ended is not None
    assert ended.reason is DenyReason.MAX_UNHEALTHY
    assert gate.paused is None
    assert gate.review(nodes_out_now=0, total_nodes=100, now=3.0) is None


def test_a_new_pause_after_a_resume_is_reported_again() -> None:
    gate = SafetyGate("1", rate_per_minute=100)
    gate.allow("n1", 1, 100, now=0.0)
    gate.review(0, 100, now=1.0)
    assert denied(gate.allow("n2", 1, 100, now=2.0)).new_pause


def test_remediations_beyond_the_rate_per_minute_are_denied() -> None:
    gate = SafetyGate("50%", rate_per_minute=3)
    assert all(allowed(gate.allow(f"n{i}", 0, 100, now=float(i))) for i in range(3))
    assert denied(gate.allow("n3", 0, 100, now=30.0)).reason is DenyReason.RATE_LIMITED


def test_the_rate_limit_frees_up_a_minute_after_each_remediation() -> None:
    gate = SafetyGate("50%", rate_per_minute=1)
    gate.allow("n0", 0, 100, now=0.0)
    assert allowed(gate.allow("n1", 0, 100, now=60.0))


def test_rate_limiting_is_not_a_pause() -> None:
    gate = SafetyGate("50%", rate_per_minute=1)
    gate.allow("n0", 0, 100, now=0.0)
    assert not denied(gate.allow("n1", 0, 100, now=1.0)).new_pause
    assert gate.paused is None


def test_denied_remediations_do_not_use_up_the_rate() -> None:
    gate = SafetyGate("1", rate_per_minute=1)
    gate.allow("n0", 5, 100, now=0.0)
    assert allowed(gate.allow("n1", 0, 100, now=1.0))


def test_mass_silence_pauses_remediation_even_below_max_unhealthy() -> None:
    gate = SafetyGate("10%", rate_per_minute=100)
    result = denied(gate.allow("n1", 0, 100, now=0.0, silent_nodes=11))
    assert result.reason is DenyReason.MASS_SILENCE
    assert "broker" in result.message


def test_mass_silence_is_more_silent_agents_than_the_limit() -> None:
    assert mass_silence(11, 100, "10%")
    assert not mass_silence(10, 100, "10%")


@given(
    limit=st.integers(0, 20),
    already_out=st.integers(0, 30),
    candidates=st.integers(0, 50),
)
def test_property_a_round_of_allows_never_takes_more_than_the_limit_out(
    limit: int, already_out: int, candidates: int
) -> None:
    gate = SafetyGate(str(limit), rate_per_minute=1000)
    out = already_out
    for i in range(candidates):
        if allowed(gate.allow(f"n{i}", out, 100, now=0.0)):
            out += 1
    assert out <= max(limit, already_out)


# -- the gate and the lifecycle together -----------------------------------------------------


def _fleet(total: int, silent: int, now: float) -> ClusterModel:
    model = ClusterModel()
    for i in range(total):
        model.apply_state(state(f"n{i:03d}"), now=now - 10)
    for i in range(silent):
        model.apply_status(status(f"n{i:03d}", online=False), now=now - 120)
    return model


def test_thirty_percent_of_agents_silent_and_not_ready_remediates_nothing_and_pauses_once() -> None:
    now = 10_000.0
    model = _fleet(total=100, silent=30, now=now)
    gate = SafetyGate("10%", rate_per_minute=1000)
    results: list[Allow | Deny] = []
    for round_now in (now, now + 10):  # suspect first, then the would-be remediations
        silent = model.silent_in_service(round_now, CONFIG)
        for record in list(model.nodes()):
            facts = NodeFacts(name=record.name, ready=False)
            transition = decide(record, facts, round_now, CONFIG)
            if transition is None:
                continue
            verdict = gate.admit(
                transition, model.nodes_out(), len(model), round_now, silent_nodes=silent
            )
            results.append(verdict)
            if isinstance(verdict, Allow):
                model.apply_transition(transition, round_now)

    assert model.nodes_out() == 0
    denials = [r for r in results if isinstance(r, Deny)]
    assert len(denials) == 30
    assert sum(d.new_pause for d in denials) == 1
    assert {d.reason for d in denials} == {DenyReason.MASS_SILENCE}


def test_a_single_silent_not_ready_node_is_remediated() -> None:
    now = 10_000.0
    model = _fleet(total=100, silent=1, now=now)
    gate = SafetyGate("10%", rate_per_minute=10)
    record = model.node("n000")
    assert record is not None
    model.apply_transition(
        Transition("n000", Lifecycle.HEALTHY, Lifecycle.SUSPECT, None, Reason.AGENT_SILENT, ""),
        now,
    )
    transition = decide(record, NodeFacts(name="n000", ready=False), now, CONFIG)
    assert transition is not None
    silent = model.silent_in_service(now, CONFIG)
    assert allowed(gate.admit(transition, model.nodes_out(), len(model), now, silent_nodes=silent))


@pytest.mark.parametrize(
    ("source", "target", "reason"),
    [
        (Lifecycle.RECOVERING, Lifecycle.HEALTHY, Reason.RECOVERED),
        (Lifecycle.PENDING_REBOOT, Lifecycle.HEALTHY, Reason.OPERATOR_CLEAR),
        (Lifecycle.UNSCHEDULABLE, Lifecycle.PENDING_REPLACEMENT, Reason.FAULT_ESCALATED),
        (Lifecycle.HEALTHY, Lifecycle.HELD, Reason.OPERATOR_HOLD),
    ],
    ids=["recovery", "clear", "escalation", "hold"],
)
def test_a_paused_gate_never_blocks_recovery_escalation_or_operators(
    source: Lifecycle, target: Lifecycle, reason: Reason
) -> None:
    gate = SafetyGate("1", rate_per_minute=1)
    gate.allow("other", 5, 100, now=0.0, silent_nodes=50)
    assert gate.paused is not None
    transition = Transition("n1", source, target, NodeMark.SCHEDULABLE, reason, "")
    assert allowed(gate.admit(transition, 5, 100, now=1.0, silent_nodes=50))


def test_a_recovery_decided_during_a_pause_goes_through() -> None:
    gate = SafetyGate("0", rate_per_minute=1)
    gate.allow("other", 99, 100, now=0.0, silent_nodes=99)
    model = ClusterModel(max_report_gap_s=CONFIG.offline_grace_s)
    model.apply_state(state(boot_id="boot-a", health=Health.UNHEALTHY, action=Action.REBOOT), 0.0)
    first = model.node("gpu-1")
    assert first is not None
    fault = decide(first, None, 0.0, CONFIG)
    assert fault is not None
    model.apply_transition(fault, 0.0)  # out before the pause
    transition: Transition | None = None
    for seq, t in enumerate(range(10, 320, 10), start=1):
        model.apply_state(state(seq=seq, boot_id="boot-b"), float(t))
        record = model.node("gpu-1")
        assert record is not None
        transition = decide(record, None, float(t), CONFIG)
        if transition is not None and transition.target is not Lifecycle.HEALTHY:
            model.apply_transition(transition, float(t))
            transition = None
        if transition is not None:
            break
    assert transition is not None
    assert transition.target is Lifecycle.HEALTHY
    assert allowed(gate.admit(transition, 99, 100, now=320.0, silent_nodes=99))


@pytest.mark.parametrize(("total", "limit"), [(1, 1), (4, 1), (9, 1), (10, 1), (19, 1), (20, 2)])
def test_max_unhealthy_percent_always_lets_one_node_out(total: int, limit: int) -> None:
    # Cluster API's MachineHealthCheck remediates one machine of a small pool too: a 10% cap
    # that rounded 4 nodes down to 0 would never take a node with XID 79 out.
    assert MaxUnhealthy.parse("10%").limit(total) == limit


@pytest.mark.parametrize("text", ["0", "0%"])
def test_max_unhealthy_zero_still_means_no_node_out(text: str) -> None:
    assert MaxUnhealthy.parse(text).limit(100) == 0


def test_a_fault_on_a_four_node_fleet_is_remediated_under_the_default_cap() -> None:
    gate = SafetyGate("10%", rate_per_minute=100)
    assert allowed(gate.allow("n1", nodes_out_now=0, total_nodes=4, now=0.0))
