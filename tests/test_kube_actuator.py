"""KubeActuator against the fake API server, through the real kubernetes client."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from coordinator.actuators import MarkFact, NodeMark
from coordinator.backends.kubernetes.actuator import KubeActuator
from coordinator.backends.kubernetes.client import (
    ApiCall,
    KubeConfigError,
    KubeUnavailableError,
    RetryPolicy,
    close_api_client,
    kube_client_from,
)
from coordinator.backends.kubernetes.contract import (
    API_CALLS_USED,
    CORDONED_BY_ANNOTATION,
    GPU_CONDITION,
    HEALTH_LABEL,
    UNHEALTHY_TAINT_KEY,
)
from tests.fakekube import FakeKube

NODE = "/api/v1/nodes/gpu-1"
OTHER_TAINT = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
FAST_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=2.0, base_delay_s=0.01, max_delay_s=0.05)
SHORT_DEADLINE = RetryPolicy(
    deadline_s=0.5, request_timeout_s=0.5, base_delay_s=0.01, max_delay_s=0.05
)


@pytest.fixture
def fake(fake_kube: FakeKube) -> FakeKube:
    """The fake API server holding gpu-1, a GPU node that carries someone else's taint."""
    fake_kube.add_node(
        "gpu-1",
        labels={"node.kubernetes.io/instance-type": "p5.48xlarge", "team": "research"},
        taints=[OTHER_TAINT],
    )
    return fake_kube


@pytest.fixture
def calls() -> list[ApiCall]:
    return []


@pytest.fixture
async def actuator(
    fake: FakeKube, kube_api_client: ApiClient, calls: list[ApiCall]
) -> AsyncIterator[KubeActuator]:
    actuator = KubeActuator(
        kube_api_client, retry=FAST_RETRY, observer=calls.append, rng=random.Random(7)
    )
    yield actuator
    await actuator.close()


def fact(reason: str, message: str) -> MarkFact:
    """A decision's fact, the same for equal words (so a repeated call is the same fact)."""
    digest = hashlib.sha1(f"{reason}\0{message}".encode()).hexdigest()[:16]
    return MarkFact(reason=reason, message=message, id=digest)


def condition(node: dict[str, Any], condition_type: str = GPU_CONDITION) -> dict[str, Any]:
    found: dict[str, Any] = next(
        c for c in node["status"]["conditions"] if c["type"] == condition_type
    )
    return found


async def test_mark_unhealthy_cordons_claims_taints_labels_sets_the_condition_and_records_an_event(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.PENDING_REBOOT, fact("XID79", "GPU 3 fell off the bus")
    )

    node = fake.node("gpu-1")
    assert (result.ok, result.changed) == (True, True)
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["annotations"][CORDONED_BY_ANNOTATION] == "gpuwarden"
    assert node["spec"]["taints"] == [
        OTHER_TAINT,
        {"key": UNHEALTHY_TAINT_KEY, "effect": "NoSchedule"},
    ]
    assert node["metadata"]["labels"][HEALTH_LABEL] == "UnschedulablePendingReboot"
    gpu = condition(node)
    assert (gpu["status"], gpu["reason"], gpu["message"]) == (
        "False",
        "XID79",
        "GPU 3 fell off the bus",
    )
    [event] = fake.events()
    assert (event["reason"], event["type"], event["involvedObject"]["name"]) == (
        "NodeMarkedForRecovery",
        "Warning",
        "gpu-1",
    )
    assert event["involvedObject"]["uid"] == node["metadata"]["uid"]


async def test_marking_unschedulable_records_a_gpu_fault_event(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy("gpu-1", NodeMark.UNSCHEDULABLE, fact("ECC", "double-bit error"))

    assert [e["reason"] for e in fake.events()] == ["GPUFault"]


async def test_a_node_kept_marked_after_a_reboot_is_not_reported_as_a_new_gpu_fault(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("NodeMarkedForRecovery", "came back on boot b2")
    )
    assert [e["reason"] for e in fake.events()] == ["NodeMarkedForRecovery"]


async def test_a_second_identical_mark_makes_no_write(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    fake.clear_requests()

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert (result.ok, result.changed) == (True, False)
    assert fake.writes() == []


async def test_a_stronger_mark_changes_only_the_label_and_the_event(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    fake.clear_requests()

    escalation = MarkFact("XID79", "fell off the bus")  # same words, a new decision
    result = await actuator.mark_unhealthy("gpu-1", NodeMark.PENDING_REPLACEMENT, escalation)

    [patch] = [r for r in fake.writes() if r.method == "PATCH"]
    assert result.changed
    assert patch.body["metadata"]["labels"] == {HEALTH_LABEL: "UnschedulablePendingReplacement"}
    assert "spec" not in patch.body
    assert [e["reason"] for e in fake.events()] == ["GPUFault", "NodeMarkedForRecovery"]


async def test_mark_healthy_undoes_exactly_what_mark_unhealthy_did(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    before = fake.node("gpu-1")
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.PENDING_REBOOT, fact("XID79", "fell off the bus")
    )

    result = await actuator.mark_healthy("gpu-1", fact("Rebooted", "healthy on a new boot"))

    after = fake.node("gpu-1")
    assert (result.ok, result.changed) == (True, True)
    assert "unschedulable" not in after["spec"]
    assert CORDONED_BY_ANNOTATION not in after["metadata"].get("annotations", {})
    assert after["spec"]["taints"] == before["spec"]["taints"]
    assert after["metadata"]["labels"] == {
        **before["metadata"]["labels"],
        HEALTH_LABEL: "Schedulable",
    }
    assert (condition(after)["status"], condition(after)["reason"]) == ("True", "Rebooted")
    assert condition(after, "Ready") == condition(before, "Ready")
    assert [e["reason"] for e in fake.events()] == ["NodeMarkedForRecovery", "NodeRecovered"]


async def test_mark_healthy_on_a_node_never_marked_records_no_recovery(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    result = await actuator.mark_healthy("gpu-1", fact("Healthy", "all GPUs pass"))

    node = fake.node("gpu-1")
    assert result.ok
    assert node["metadata"]["labels"][HEALTH_LABEL] == "Schedulable"
    assert condition(node)["status"] == "True"
    assert fake.events() == []


async def test_a_second_mark_healthy_makes_no_write(fake: FakeKube, actuator: KubeActuator) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    await actuator.mark_healthy("gpu-1", fact("Rebooted", "healthy on a new boot"))
    fake.clear_requests()

    result = await actuator.mark_healthy("gpu-1", fact("Rebooted", "healthy on a new boot"))

    assert (result.ok, result.changed) == (True, False)
    assert fake.writes() == []


async def test_a_node_someone_else_cordoned_is_not_claimed_nor_uncordoned(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.modify_node("gpu-1", lambda n: n["spec"].update({"unschedulable": True}))

    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    marked = fake.node("gpu-1")
    await actuator.mark_healthy("gpu-1", fact("Rebooted", "healthy on a new boot"))

    healed = fake.node("gpu-1")
    assert CORDONED_BY_ANNOTATION not in marked["metadata"].get("annotations", {})
    assert healed["spec"]["unschedulable"] is True
    assert all(t["key"] != UNHEALTHY_TAINT_KEY for t in healed["spec"]["taints"])


async def test_a_conflict_rereads_and_keeps_a_concurrent_change_by_someone_else(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    def someone_else_labels_the_node() -> None:
        fake.modify_node("gpu-1", lambda n: n["metadata"]["labels"].update({"owner": "ops"}))

    fake.before_next("PATCH", NODE, someone_else_labels_the_node)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    node = fake.node("gpu-1")
    assert result.ok
    assert [r.status for r in fake.requests("PATCH", NODE)] == [409, 200]
    assert len(fake.requests("GET", NODE)) == 2
    assert node["metadata"]["labels"]["owner"] == "ops"
    assert node["metadata"]["labels"][HEALTH_LABEL] == "Unschedulable"


async def test_a_conflict_answered_once_is_followed_by_success(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.fail_next("PATCH", NODE, 409)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert (result.ok, result.changed) == (True, True)
    assert fake.node("gpu-1")["spec"]["unschedulable"] is True


async def test_a_server_error_is_retried_until_it_succeeds(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.fail_next("PATCH", NODE, 500)
    fake.fail_next("PATCH", NODE + "/status", 503)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    node = fake.node("gpu-1")
    assert result.ok
    assert node["metadata"]["labels"][HEALTH_LABEL] == "Unschedulable"
    assert condition(node)["status"] == "False"


async def test_an_api_server_failing_past_the_deadline_gives_not_ok(
    fake: FakeKube, kube_api_client: ApiClient
) -> None:
    actuator = KubeActuator(kube_api_client, retry=SHORT_DEADLINE)
    fake.fail_next("PATCH", NODE, 500, times=1000)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert (result.ok, result.changed) == (False, False)
    assert "500" in result.detail


async def test_a_missing_node_gives_not_ok_saying_it_is_gone(actuator: KubeActuator) -> None:
    result = await actuator.mark_unhealthy(
        "gpu-404", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert (result.ok, result.changed) == (False, False)
    assert "gone" in result.detail


async def test_a_node_deleted_between_read_and_write_gives_not_ok(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.fail_next("PATCH", NODE, 404)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert not result.ok
    assert "gone" in result.detail


async def test_a_lost_event_fails_the_attempt_but_the_marks_stand(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.fail_next("POST", "/api/v1/namespaces/default/events", 403)

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert not result.ok
    assert "not recorded" in result.detail
    assert fake.node("gpu-1")["metadata"]["labels"][HEALTH_LABEL] == "Unschedulable"
    assert fake.events() == []


async def test_the_next_attempt_records_the_missing_event_and_rewrites_no_mark(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.fail_next("POST", "/api/v1/namespaces/default/events", 403)
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    fake.clear_requests()

    result = await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    assert result.ok
    assert [r.method for r in fake.writes()] == ["POST"]
    assert [e["reason"] for e in fake.events()] == ["GPUFault"]


async def test_a_fact_gets_one_event_even_when_its_first_post_landed_unanswered(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    xid = fact("XID79", "fell off the bus")
    await actuator.mark_unhealthy("gpu-1", NodeMark.UNSCHEDULABLE, xid)
    # the same fact again, as a retry whose earlier POST got in after its client gave up
    fake.fail_next("GET", "/api/v1/namespaces/default/events/*", 404)

    result = await actuator.mark_unhealthy("gpu-1", NodeMark.UNSCHEDULABLE, xid)

    assert result.ok
    assert "already recorded" in result.detail
    assert len(fake.events()) == 1


async def test_the_mark_records_its_decision_on_the_node(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    xid = fact("GPUFault", "XID 79 on GPU 2")
    await actuator.mark_unhealthy("gpu-1", NodeMark.PENDING_REBOOT, xid)

    facts = await actuator.node_facts("gpu-1")

    assert facts.fact is not None
    assert (facts.fact.id, facts.fact.message) == (xid.id, "XID 79 on GPU 2")


async def test_a_recovery_finished_by_a_retry_still_gets_its_one_event(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy("gpu-1", NodeMark.PENDING_REBOOT, fact("XID79", "off the bus"))
    recovered = fact("NodeRecovered", "healthy on a new boot")
    fake.fail_next("POST", "/api/v1/namespaces/default/events", 500, times=1000)
    short = KubeActuator(actuator._api.client, retry=SHORT_DEADLINE)
    assert not (await short.mark_healthy("gpu-1", recovered)).ok  # marks lifted, event lost
    fake.clear_faults()

    result = await actuator.mark_healthy("gpu-1", recovered)

    assert result.ok
    assert [e["reason"] for e in fake.events()] == ["NodeMarkedForRecovery", "NodeRecovered"]


async def test_list_nodes_names_every_node_of_the_cluster(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.add_node("gpu-2")

    assert await actuator.list_nodes() == frozenset({"gpu-1", "gpu-2"})


async def test_a_slow_api_server_does_not_block_the_event_loop(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    fake.delay_next("GET", NODE, 0.5)
    ticker = asyncio.create_task(tick())
    try:
        facts = await actuator.node_facts("gpu-1")
        ticks_during_the_call = ticks
    finally:
        ticker.cancel()

    assert facts.exists
    assert ticks_during_the_call >= 3


async def test_a_request_slower_than_its_timeout_is_abandoned_and_retried(
    fake: FakeKube, kube_api_client: ApiClient, calls: list[ApiCall]
) -> None:
    impatient = KubeActuator(
        kube_api_client,
        retry=RetryPolicy(deadline_s=5.0, request_timeout_s=0.5, base_delay_s=0.01),
        observer=calls.append,
    )
    fake.delay_next("GET", NODE, 2.0)

    facts = await impatient.node_facts("gpu-1")

    assert facts.instance_type == "p5.48xlarge"
    assert [c.outcome for c in calls] == ["timeout", "ok"]


async def test_node_facts_read_readiness_instance_type_and_our_marks(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.PENDING_REBOOT, fact("XID79", "fell off the bus")
    )

    facts = await actuator.node_facts("gpu-1")

    assert facts.name == "gpu-1"
    assert facts.exists
    assert facts.ready is True
    assert facts.instance_type == "p5.48xlarge"
    assert facts.mark is NodeMark.PENDING_REBOOT
    assert facts.cordoned_by_us
    assert facts.unschedulable


async def test_node_facts_fall_back_to_the_beta_instance_type_label(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.add_node("old", labels={"beta.kubernetes.io/instance-type": "p4d.24xlarge"}, ready=False)

    facts = await actuator.node_facts("old")

    assert (facts.instance_type, facts.ready, facts.mark) == ("p4d.24xlarge", False, None)


async def test_node_facts_of_a_missing_node_say_it_does_not_exist(
    actuator: KubeActuator,
) -> None:
    facts = await actuator.node_facts("gpu-404")

    assert (facts.name, facts.exists) == ("gpu-404", False)


async def test_node_facts_raise_when_the_api_server_stays_unavailable(
    fake: FakeKube, kube_api_client: ApiClient
) -> None:
    actuator = KubeActuator(kube_api_client, retry=SHORT_DEADLINE)
    fake.fail_next("GET", NODE, 503, times=1000)

    with pytest.raises(KubeUnavailableError):
        await actuator.node_facts("gpu-1")


async def test_list_marked_lists_only_nodes_marked_other_than_schedulable(
    fake: FakeKube, actuator: KubeActuator
) -> None:
    fake.add_node("gpu-2", labels={HEALTH_LABEL: "Schedulable"})
    fake.add_node("gpu-3")
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )

    marked = await actuator.list_marked()

    assert [(f.name, f.mark) for f in marked] == [("gpu-1", NodeMark.UNSCHEDULABLE)]


async def test_every_call_is_observed_and_declared(
    fake: FakeKube, actuator: KubeActuator, calls: list[ApiCall]
) -> None:
    await actuator.mark_unhealthy(
        "gpu-1", NodeMark.UNSCHEDULABLE, fact("XID79", "fell off the bus")
    )
    await actuator.mark_healthy("gpu-1", fact("Rebooted", "healthy"))
    await actuator.list_marked()

    assert {(c.verb, c.resource) for c in calls} == {
        ("get", "nodes"),
        ("patch", "nodes"),
        ("patch", "nodes/status"),
        ("get", "events"),
        ("create", "events"),
        ("list", "nodes"),
    }
    assert {(c.verb, c.resource) for c in calls} <= API_CALLS_USED
    # the one miss is the look for an Event before creating it
    assert [c.resource for c in calls if c.outcome != "ok"] == ["events", "events"]
    assert all(c.seconds >= 0 for c in calls)
    assert len(calls) == len(fake.requests())


async def test_a_failed_call_is_observed_with_its_status(
    fake: FakeKube, actuator: KubeActuator, calls: list[ApiCall]
) -> None:
    fake.fail_next("GET", NODE, 500)

    await actuator.node_facts("gpu-1")

    assert [(c.verb, c.outcome) for c in calls] == [("get", "500"), ("get", "ok")]


# --- client construction ----------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        f"""
apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster: {{server: "{server}"}}
users:
- name: tester
  user: {{token: "t0ken"}}
contexts:
- name: fake
  context: {{cluster: fake, user: tester}}
current-context: fake
"""
    )
    return path


async def test_a_kubeconfig_client_reaches_the_cluster_it_names(
    fake: FakeKube, tmp_path: Path
) -> None:
    config = write_kubeconfig(tmp_path / "config", fake.url)
    api_client = kube_client_from(f"kubeconfig:{config}", environ={})
    try:
        facts = await KubeActuator(api_client, close_client=True).node_facts("gpu-1")
    finally:
        close_api_client(api_client)

    assert facts.exists
    assert fake.requests("GET", NODE)


def test_auto_uses_the_home_kubeconfig_outside_a_cluster(fake: FakeKube, tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    write_kubeconfig(tmp_path / ".kube" / "config", fake.url)

    api_client = kube_client_from("auto", environ={}, home=tmp_path)
    close_api_client(api_client)

    assert api_client.configuration.host == fake.url


def test_auto_without_a_cluster_or_kubeconfig_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST"):
        kube_client_from("auto", environ={}, home=tmp_path)


def test_auto_inside_a_cluster_uses_the_service_account(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}

    with pytest.raises(KubeConfigError, match="service account"):
        kube_client_from("auto", environ=environ, service_account_dir=tmp_path)


def test_an_unknown_kube_mode_is_refused() -> None:
    with pytest.raises(KubeConfigError, match="expected auto"):
        kube_client_from("cluster-please", environ={})
