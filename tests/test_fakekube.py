"""The fake API server behaves like the real one where gpuwarden's code depends on it.

These talk to the fake with the official client directly (not through
coordinator.backends.kubernetes), so a fake that drifted from the API server's behaviour
fails here, not as a puzzling kube test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.fakekube import FakeKube

SMP = "application/strategic-merge-patch+json"


@pytest.fixture
def core(kube_api_client: ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_api_client)


def raw_json(response: Any) -> Any:
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def watch_lines(response: Any) -> list[dict[str, Any]]:
    """A whole (server-ended) watch stream, one event per line."""
    try:
        return [json.loads(line) for line in response.data.decode().splitlines()]
    finally:
        response.release_conn()


def test_a_patch_carrying_a_stale_resource_version_answers_409(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    node = fake_kube.add_node("n1")
    fake_kube.modify_node("n1", lambda n: n["metadata"]["labels"].update({"a": "b"}))

    with pytest.raises(ApiException) as raised:
        core.patch_node(
            "n1",
            {
                "metadata": {
                    "labels": {"x": "y"},
                    "resourceVersion": node["metadata"]["resourceVersion"],
                }
            },
        )

    assert raised.value.status == 409
    assert "x" not in fake_kube.node("n1")["metadata"]["labels"]


def test_a_patch_that_changes_nothing_keeps_the_resource_version(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_node("n1", labels={"a": "b"})
    before = fake_kube.node("n1")["metadata"]["resourceVersion"]

    core.patch_node("n1", {"metadata": {"labels": {"a": "b"}}})

    assert fake_kube.node("n1")["metadata"]["resourceVersion"] == before


def test_the_node_endpoint_ignores_status_and_the_status_endpoint_changes_only_status(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_node("n1")
    bogus = {"type": "Bogus", "status": "True"}

    core.patch_node("n1", {"status": {"conditions": [bogus]}})
    core.patch_node_status(
        "n1", {"metadata": {"labels": {"x": "y"}}, "status": {"conditions": [bogus]}}
    )

    node = fake_kube.node("n1")
    assert [c["type"] for c in node["status"]["conditions"]] == ["Ready", "Bogus"]
    assert "x" not in node["metadata"]["labels"]


def test_strategic_merge_of_conditions_replaces_only_the_condition_of_the_same_type(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_node("n1", conditions=[{"type": "GPUHealthy", "status": "True"}])

    core.patch_node_status(
        "n1",
        {"status": {"conditions": [{"type": "GPUHealthy", "status": "False", "reason": "X"}]}},
        _content_type=SMP,
    )

    conditions = {c["type"]: c for c in fake_kube.node("n1")["status"]["conditions"]}
    assert conditions["GPUHealthy"]["status"] == "False"
    assert conditions["Ready"]["status"] == "True"


def test_a_not_equal_selector_also_matches_nodes_without_the_label(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_node("plain")
    fake_kube.add_node("healthy", labels={"h": "ok"})
    fake_kube.add_node("sick", labels={"h": "bad"})

    def names(selector: str) -> list[str]:
        listing = raw_json(core.list_node(label_selector=selector, _preload_content=False))
        return sorted(n["metadata"]["name"] for n in listing["items"])

    assert names("h!=ok") == ["plain", "sick"]
    assert names("h,h!=ok") == ["sick"]


def test_a_watch_from_a_compacted_version_gets_410_expired_as_an_error_event(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1")
    old_version = str(fake_kube.resource_version)
    fake_kube.add_pod("team", "p2")
    fake_kube.forget_history()

    response: Any = core.list_pod_for_all_namespaces(
        watch=True, resource_version=old_version, timeout_seconds=5, _preload_content=False
    )
    lines = watch_lines(response)

    assert response.status == 200
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in lines] == [
        ("ERROR", 410, "Expired")
    ]


def test_a_watch_replays_changes_after_the_version_it_resumes_from(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1")
    since = str(fake_kube.resource_version)
    fake_kube.add_pod("team", "p2")
    fake_kube.modify_pod("team", "p1", lambda p: p["metadata"]["labels"].update({"x": "y"}))

    events = watch_lines(
        core.list_namespaced_pod(
            "team", watch=True, resource_version=since, timeout_seconds=1, _preload_content=False
        )
    )

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "p2"),
        ("MODIFIED", "p1"),
    ]


def test_an_eviction_a_disruption_budget_forbids_answers_429_and_keeps_the_pod(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1", node_name="n1", labels={"app": "web"})
    fake_kube.add_disruption_budget("team", "web-pdb", "app=web", disruptions_allowed=0)
    eviction = k8s.V1Eviction(metadata=k8s.V1ObjectMeta(name="p1", namespace="team"))

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction("p1", "team", eviction)

    assert raised.value.status == 429
    assert (
        json.loads(raised.value.body or "{}")["details"]["causes"][0]["reason"]
        == "DisruptionBudget"
    )
    assert fake_kube.pod("team", "p1") is not None


def test_a_graceful_delete_marks_a_running_pod_until_its_kubelet_removes_it(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1", node_name="n1")

    core.delete_namespaced_pod("p1", "team", grace_period_seconds=30)

    pod = fake_kube.pod("team", "p1")
    assert pod is not None
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 30
    fake_kube.remove_pod("team", "p1")
    assert fake_kube.pod("team", "p1") is None


def test_scheduling_gates_cannot_be_added_after_creation(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1", scheduling_gates=["a"])

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod(
            "p1", "team", {"spec": {"schedulingGates": [{"name": "b"}]}}, _content_type=SMP
        )

    assert raised.value.status == 422


def test_a_failing_json_patch_test_operation_answers_422(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_pod("team", "p1", scheduling_gates=["a", "b"])
    operations = [
        {"op": "test", "path": "/spec/schedulingGates/0/name", "value": "b"},
        {"op": "remove", "path": "/spec/schedulingGates/0"},
    ]

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod(
            "p1", "team", operations, _content_type="application/json-patch+json"
        )

    assert raised.value.status == 422
    pod = fake_kube.pod("team", "p1")
    assert pod is not None
    assert [g["name"] for g in pod["spec"]["schedulingGates"]] == ["a", "b"]


def test_leases_conflict_on_a_second_create_and_are_404_when_missing(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    coordination = k8s.CoordinationV1Api(core.api_client)
    lease = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name="l"), spec=k8s.V1LeaseSpec())

    with pytest.raises(ApiException) as missing:
        coordination.read_namespaced_lease("l", "ns")
    coordination.create_namespaced_lease("ns", lease)
    with pytest.raises(ApiException) as twice:
        coordination.create_namespaced_lease("ns", lease)

    assert (missing.value.status, twice.value.status) == (404, 409)


def test_injected_faults_answer_only_the_next_matching_requests(
    fake_kube: FakeKube, core: k8s.CoreV1Api
) -> None:
    fake_kube.add_node("n1")
    fake_kube.add_node("n2")
    fake_kube.fail_next("GET", "/api/v1/nodes/n1", 500, times=2)

    statuses = []
    for name in ("n2", "n1", "n1", "n1"):
        try:
            core.read_node(name)
            statuses.append(200)
        except ApiException as exc:
            statuses.append(exc.status)

    assert statuses == [200, 500, 500, 200]
    assert [r.status for r in fake_kube.requests("GET", "/api/v1/nodes/n1")] == [500, 500, 200]
