from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coordinator.actuators import NodeFacts, NodeMark
from coordinator.lifecycle import (
    OUT_OF_SERVICE,
    Lifecycle,
    LifecycleConfig,
    Reason,
    Transition,
)
from coordinator.model import ClusterModel, GpuCounts
from gpuwarden_common.health import Action, Finding, Health, Severity
from gpuwarden_common.wire import (
    EventKind,
    EventMessage,
    GpuProcess,
    GpuState,
    HostState,
    StateMessage,
    StatusMessage,
)

CONFIG = LifecycleConfig(offline_grace_s=60, recovery_stable_s=300)


def gpu(index: int, health: Health = Health.HEALTHY, *, lost: bool = False) -> GpuState:
    return GpuState(
        index=index,
        uuid=f"GPU-{index:04d}",
        health=health,
        lost=lost,
        utilization_gpu_pct=50.0,
        memory_used_bytes=1 << 30,
        memory_total_bytes=80 << 30,
        processes=[GpuProcess(pid=100 + index), GpuProcess(pid=200 + index)],
    )


def state(
    node: str = "gpu-1",
    *,
    seq: int = 1,
    boot_id: str = "boot-a",
    health: Health = Health.HEALTHY,
    action: Action = Action.NONE,
    gpus: list[GpuState] | None = None,
    instance_type: str | None = "p5.48xlarge",
    gpus_expected: int | None = None,
    findings: list[Finding] | None = None,
) -> StateMessage:
    return StateMessage(
        cluster="c1",
        node=node,
        seq=seq,
        boot_id=boot_id,
        ts=1.0,
        interval_s=10,
        instance_type=instance_type,
        gpus_expected=gpus_expected,
        health=health,
        action=action,
        gpus=[gpu(i) for i in range(8)] if gpus is None else gpus,
        host=HostState(),
        findings=findings or [],
    )


def status(node: str = "gpu-1", online: bool = True, boot_id: str = "boot-a") -> StatusMessage:
    return StatusMessage(
        cluster="c1",
        node=node,
        seq=0,
        boot_id=boot_id,
        ts=1.0,
        status="online" if online else "offline",
    )


def event(
    *,
    boot_id: str = "boot-a",
    kind: EventKind = EventKind.XID,
    severity: Severity = Severity.CRITICAL,
    action: Action = Action.REBOOT,
    ts: float = 1.0,
) -> EventMessage:
    return EventMessage(
        cluster="c1",
        node="gpu-1",
        seq=9,
        boot_id=boot_id,
        ts=ts,
        kind=kind,
        code="XID-79",
        xid=79,
        severity=severity,
        action=action,
        gpu_index=3,
    )


def move(model: ClusterModel, node: str, target: Lifecycle, now: float) -> None:
    record = model.node(node)
    assert record is not None
    model.apply_transition(
        Transition(node, record.lifecycle, target, None, Reason.FAULT, "test"), now
    )


# -- state reports ----------------------------------------------------------------------


def test_first_state_report_creates_a_healthy_node_with_its_gpus() -> None:
    model = ClusterModel()
    assert model.apply_state(state(), now=100.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.lifecycle is Lifecycle.HEALTHY
    assert record.instance_type == "p5.48xlarge"
    assert [g.index for g in record.gpus] == list(range(8))
    assert record.gpus[3].pids == (103, 203)
    assert record.gpus[3].process_count == 2
    assert record.gpus[3].memory_total_bytes == 80 << 30


def test_only_findings_that_say_something_are_kept() -> None:
    ok = Finding(check="xid", severity=Severity.OK, code="OK", message="")
    bad = Finding(check="ecc", severity=Severity.CRITICAL, code="ECC-DBE", message="", gpu_index=1)
    model = ClusterModel()
    model.apply_state(state(findings=[ok, bad]), now=100.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.findings == (bad,)


def test_a_state_report_not_newer_than_the_last_on_the_same_boot_is_ignored() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=5, health=Health.UNHEALTHY), now=100.0)
    assert not model.apply_state(state(seq=5, health=Health.HEALTHY), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.health is Health.UNHEALTHY


def test_a_new_boot_is_accepted_whatever_its_seq() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=500), now=100.0)
    assert model.apply_state(state(seq=1, boot_id="boot-b"), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.boot_id == "boot-b"


def test_healthy_run_starts_at_the_first_serviceable_report_and_lasts() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=1), now=100.0)
    model.apply_state(state(seq=2, health=Health.DEGRADED), now=110.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.healthy_since == 100.0


def test_an_unhealthy_report_resets_the_healthy_run() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=1), now=100.0)
    model.apply_state(state(seq=2, health=Health.UNHEALTHY), now=110.0)
    model.apply_state(state(seq=3), now=120.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.healthy_since == 120.0


def test_a_new_boot_restarts_the_healthy_run() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=1), now=100.0)
    model.apply_state(state(seq=1, boot_id="boot-b"), now=110.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.healthy_since == 110.0


def test_a_gap_in_reports_longer_than_the_max_gap_restarts_the_healthy_run() -> None:
    model = ClusterModel(max_report_gap_s=60)
    model.apply_state(state(seq=1), now=100.0)
    model.apply_state(state(seq=2), now=161.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.healthy_since == 161.0


# -- agent status -----------------------------------------------------------------------


def test_offline_status_marks_the_agent_offline_and_keeps_its_last_sign_of_life() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    assert model.apply_status(status(online=False), now=130.0)
    record = model.node("gpu-1")
    assert record is not None
    assert not record.agent_online
    assert record.offline_since == 130.0
    assert record.last_seen == 100.0


def test_offline_status_from_an_earlier_boot_is_ignored() -> None:
    model = ClusterModel()
    model.apply_state(state(boot_id="boot-a"), now=100.0)
    model.apply_status(status(boot_id="boot-b"), now=110.0)
    assert not model.apply_status(status(online=False, boot_id="boot-a"), now=111.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.agent_online


def test_offline_status_of_a_node_never_heard_creates_nothing() -> None:
    model = ClusterModel()
    assert not model.apply_status(status(online=False), now=100.0)
    assert model.node("gpu-1") is None


def test_a_state_report_brings_an_offline_agent_back_online() -> None:
    model = ClusterModel()
    model.apply_state(state(seq=1), now=100.0)
    model.apply_status(status(online=False), now=130.0)
    model.apply_state(state(seq=2), now=140.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.agent_online
    assert record.offline_since is None


# -- events -----------------------------------------------------------------------------


def test_critical_fault_event_makes_the_node_unhealthy_before_the_next_state() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    model.apply_event(event(action=Action.REBOOT), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert (record.health, record.action) == (Health.UNHEALTHY, Action.REBOOT)
    assert record.healthy_since is None
    assert record.last_event is not None
    assert record.last_event.code == "XID-79"


def test_warning_event_leaves_the_node_health_alone() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    model.apply_event(event(severity=Severity.WARNING), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.health is Health.HEALTHY


def test_fault_event_from_another_boot_leaves_the_node_health_alone() -> None:
    model = ClusterModel()
    model.apply_state(state(boot_id="boot-a"), now=100.0)
    model.apply_event(event(boot_id="boot-b"), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.health is Health.HEALTHY


def test_an_event_older_than_the_latest_report_leaves_the_node_health_alone() -> None:
    # a resend the agent kept until it was acknowledged: the report already says what it meant
    model = ClusterModel()
    model.apply_state(state(), now=100.0)  # stamped 1.0 by the agent

    model.apply_event(event(ts=0.5), now=101.0)

    record = model.node("gpu-1")
    assert record is not None
    assert record.health is Health.HEALTHY
    assert record.last_event is not None  # still recorded as what happened


def test_a_weaker_event_action_never_weakens_the_node_action() -> None:
    model = ClusterModel()
    model.apply_state(state(health=Health.UNHEALTHY, action=Action.REPLACE), now=100.0)
    model.apply_event(event(action=Action.RESET_GPU), now=101.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.action is Action.REPLACE


# -- instance type and capacity -----------------------------------------------------------


def test_the_node_label_instance_type_wins_over_the_agent() -> None:
    model = ClusterModel()
    model.apply_state(state(instance_type="guess"), now=100.0)
    model.note_facts(NodeFacts(name="gpu-1", instance_type="p4d.24xlarge"))
    record = model.node("gpu-1")
    assert record is not None
    assert record.instance_type == "p4d.24xlarge"


def test_capacity_totals_by_instance_type() -> None:
    model = ClusterModel()
    model.apply_state(state("a1", instance_type="p5"), now=100.0)
    sick = [gpu(0, Health.UNHEALTHY), *(gpu(i) for i in range(1, 8))]
    model.apply_state(state("a2", instance_type="p5", gpus=sick), now=100.0)
    model.apply_state(state("b1", instance_type="p4d"), now=100.0)
    model.apply_state(state("b2", instance_type="p4d"), now=100.0)
    move(model, "b2", Lifecycle.PENDING_REBOOT, now=101.0)
    model.apply_state(state("c1", instance_type=None, gpus=[gpu(0), gpu(1)]), now=100.0)

    capacity = model.capacity()

    assert capacity.by_instance_type["p5"] == GpuCounts(
        nodes=2, total=16, healthy=15, unhealthy=1, pending_recovery=0
    )
    assert capacity.by_instance_type["p4d"] == GpuCounts(
        nodes=2, total=16, healthy=8, unhealthy=0, pending_recovery=8
    )
    assert capacity.by_instance_type["unknown"] == GpuCounts(nodes=1, total=2, healthy=2)
    assert capacity.cluster == GpuCounts(
        nodes=5, total=34, healthy=25, unhealthy=1, pending_recovery=8
    )


def test_gpus_expected_but_missing_from_the_report_count_as_unhealthy() -> None:
    model = ClusterModel()
    model.apply_state(state(gpus=[gpu(i) for i in range(7)], gpus_expected=8), now=100.0)
    assert model.capacity().cluster == GpuCounts(nodes=1, total=8, healthy=7, unhealthy=1)


def test_gpus_the_clusters_scheduler_configures_but_the_report_lacks_count_as_unhealthy() -> None:
    model = ClusterModel()
    model.apply_state(state(gpus=[gpu(i) for i in range(6)]), now=100.0)
    model.note_facts(NodeFacts(name="gpu-1", gpus=8))  # Slurm's GRES: gpu:8
    assert model.capacity().cluster == GpuCounts(nodes=1, total=8, healthy=6, unhealthy=2)
    model.apply_state(state(gpus=[gpu(i) for i in range(6)], seq=2), now=101.0)
    assert model.capacity().cluster.total == 8  # the next report does not forget it


def test_a_lost_gpu_counts_as_unhealthy_whatever_its_health_field() -> None:
    model = ClusterModel()
    model.apply_state(state(gpus=[gpu(0), gpu(1, lost=True)]), now=100.0)
    assert model.capacity().cluster == GpuCounts(nodes=1, total=2, healthy=1, unhealthy=1)


def test_a_suspect_node_keeps_counting_its_last_reported_healthy_gpus() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    move(model, "gpu-1", Lifecycle.SUSPECT, now=200.0)
    assert model.capacity().cluster.healthy == 8


def test_capacity_counts_nodes_in_every_lifecycle_state() -> None:
    model = ClusterModel()
    model.apply_state(state("a"), now=100.0)
    model.apply_state(state("b"), now=100.0)
    move(model, "b", Lifecycle.RECOVERING, now=101.0)
    by_state = model.capacity().nodes_by_lifecycle
    assert set(by_state) == set(Lifecycle)
    assert by_state[Lifecycle.HEALTHY] == 1
    assert by_state[Lifecycle.RECOVERING] == 1
    assert by_state[Lifecycle.SUSPECT] == 0


def test_healthy_gpus_by_node_is_zero_for_a_node_out_of_service() -> None:
    model = ClusterModel()
    model.apply_state(state("a"), now=100.0)
    model.apply_state(state("b"), now=100.0)
    move(model, "b", Lifecycle.UNSCHEDULABLE, now=101.0)
    assert model.healthy_gpus_by_node() == {"a": 8, "b": 0}


_GPU_HEALTHS = st.sampled_from(list(Health))
_NODES = st.lists(
    st.tuples(
        st.sampled_from(["p5", "p4d", None]),
        st.lists(st.tuples(_GPU_HEALTHS, st.booleans()), max_size=8),
        st.none() | st.integers(0, 10),
        st.sampled_from(list(Lifecycle)),
    ),
    max_size=30,
)


@given(_NODES)
def test_capacity_buckets_always_add_up_to_the_totals(
    nodes: list[tuple[str | None, list[tuple[Health, bool]], int | None, Lifecycle]],
) -> None:
    model = ClusterModel()
    for i, (itype, healths, expected, lifecycle) in enumerate(nodes):
        gpus = [gpu(j, h, lost=lost) for j, (h, lost) in enumerate(healths)]
        model.apply_state(
            state(f"n{i}", instance_type=itype, gpus=gpus, gpus_expected=expected), now=1.0
        )
        move(model, f"n{i}", lifecycle, now=2.0)

    capacity = model.capacity()
    parts = [capacity.cluster, *capacity.by_instance_type.values()]
    for c in parts:
        assert c.healthy + c.unhealthy + c.pending_recovery == c.total
    per_type = capacity.by_instance_type.values()
    assert sum(c.total for c in per_type) == capacity.cluster.total
    assert sum(c.nodes for c in per_type) == capacity.cluster.nodes == len(nodes)
    assert sum(model.healthy_gpus_by_node().values()) == capacity.cluster.healthy
    assert sum(capacity.nodes_by_lifecycle.values()) == len(nodes)


# -- transitions and operators ------------------------------------------------------------


def test_reboot_class_remediation_remembers_when_and_on_which_boot() -> None:
    model = ClusterModel()
    model.apply_state(state(boot_id="boot-a"), now=100.0)
    move(model, "gpu-1", Lifecycle.PENDING_REBOOT, now=150.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.last_reboot_remediation_at == 150.0
    assert record.reboot_remediation_boot_id == "boot-a"
    assert record.out_boot_id == "boot-a"
    assert record.lifecycle_since == 150.0


def test_operator_clear_transition_drops_hold_and_reboot_history() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    move(model, "gpu-1", Lifecycle.PENDING_REBOOT, now=150.0)
    model.hold("gpu-1")
    model.clear("gpu-1")
    clear = Transition(
        "gpu-1",
        Lifecycle.PENDING_REBOOT,
        Lifecycle.HEALTHY,
        NodeMark.SCHEDULABLE,
        Reason.OPERATOR_CLEAR,
        "cleared",
    )
    model.apply_transition(clear, now=160.0)
    record = model.node("gpu-1")
    assert record is not None
    assert (record.hold, record.clear_requested) == (False, False)
    assert record.last_reboot_remediation_at is None
    assert record.out_boot_id is None


def test_operator_commands_on_an_unknown_node_say_so() -> None:
    model = ClusterModel()
    assert not model.hold("nope")
    assert not model.clear("nope")


def test_a_restored_out_of_service_node_with_unknown_boot_needs_a_boot_after_its_first_report() -> (
    None
):
    model = ClusterModel()
    model.restore("gpu-1", Lifecycle.PENDING_REBOOT, since=50.0)
    model.apply_state(state(boot_id="boot-now"), now=100.0)
    record = model.node("gpu-1")
    assert record is not None
    assert record.lifecycle is Lifecycle.PENDING_REBOOT
    assert record.out_boot_id == "boot-now"


def test_a_forgotten_node_leaves_the_model() -> None:
    model = ClusterModel()
    model.apply_state(state(), now=100.0)
    assert model.forget("gpu-1")
    assert model.node("gpu-1") is None
    assert len(model) == 0


def test_nodes_out_counts_every_out_of_service_state() -> None:
    model = ClusterModel()
    for i, lifecycle in enumerate(Lifecycle):
        model.apply_state(state(f"n{i}"), now=100.0)
        move(model, f"n{i}", lifecycle, now=101.0)
    assert model.nodes_out() == len(OUT_OF_SERVICE)


def test_silent_in_service_counts_only_silent_nodes_still_in_service() -> None:
    model = ClusterModel()
    model.apply_state(state("fresh"), now=1000.0)
    model.apply_state(state("quiet"), now=900.0)
    model.apply_state(state("offline"), now=1000.0)
    model.apply_status(status("offline", online=False), now=1000.0)
    model.apply_state(state("quiet-but-out"), now=900.0)
    move(model, "quiet-but-out", Lifecycle.UNSCHEDULABLE, now=950.0)
    assert model.silent_in_service(now=1000.0, config=CONFIG) == 2
