"""KubePods (governance's pod operations) against the fake API server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from kubernetes.client import ApiClient

from coordinator.backends.kubernetes.client import ApiCall, RetryPolicy
from coordinator.backends.kubernetes.contract import EventReason, EventType
from coordinator.backends.kubernetes.pod_api import EvictOutcome, KubePods
from coordinator.pods import (
    ADMISSION_GATE,
    CHECKPOINT_GRACE_ANNOTATION,
    LAST_CHECKPOINT_ANNOTATION,
    MAX_REQUEUES_ANNOTATION,
    PRIORITY_CLASS_LABEL,
    TASK_LABEL,
    TASK_SIZE_ANNOTATION,
    PodInfo,
    pod_info_from_json,
)
from tests.fakekube import FakeKube

FAST_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=2.0, base_delay_s=0.01, max_delay_s=0.05)
TASK_LABELS = {TASK_LABEL: "llama-ft", PRIORITY_CLASS_LABEL: "training"}
WAIT_S = 10.0


@pytest.fixture
def calls() -> list[ApiCall]:
    return []


@pytest.fixture
async def pods(kube_api_client: ApiClient, calls: list[ApiCall]) -> AsyncIterator[KubePods]:
    pods = KubePods(kube_api_client, retry=FAST_RETRY, observer=calls.append, rng=random.Random(3))
    yield pods
    await pods.close()


class Watching:
    """Reads a watch_pods iterator in the background, closing it at the end."""

    def __init__(self, stream: AsyncIterator[tuple[str, PodInfo]]) -> None:
        self.stream = stream
        self.events: list[tuple[str, str]] = []
        self._arrived = asyncio.Condition()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for change_type, pod in self.stream:
            async with self._arrived:
                self.events.append((change_type, pod.name))
                self._arrived.notify_all()

    async def until(self, count: int) -> list[tuple[str, str]]:
        async def enough() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.events) >= count)

        await asyncio.wait_for(enough(), WAIT_S)
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        aclose = getattr(self.stream, "aclose", None)
        if aclose is not None:
            await aclose()


# --- reading pods -----------------------------------------------------------------------------


async def test_list_pods_reads_what_governance_needs(fake_kube: FakeKube, pods: KubePods) -> None:
    fake_kube.add_pod(
        "research",
        "llama-0",
        node_name="gpu-1",
        labels=TASK_LABELS,
        annotations={
            TASK_SIZE_ANNOTATION: "4",
            LAST_CHECKPOINT_ANNOTATION: "2025-03-01T12:00:00Z",
            CHECKPOINT_GRACE_ANNOTATION: "120",
            MAX_REQUEUES_ANNOTATION: "3",
        },
        gpus=4,
        containers=2,
    )

    [pod], version = await pods.list_pods()

    assert version == str(fake_kube.resource_version)
    assert (pod.namespace, pod.name, pod.node_name, pod.phase) == (
        "research",
        "llama-0",
        "gpu-1",
        "Running",
    )
    assert (pod.task, pod.priority_class, pod.task_size) == ("llama-ft", "training", 4)
    assert pod.last_checkpoint == datetime(2025, 3, 1, 12, tzinfo=UTC).timestamp()
    assert (pod.checkpoint_grace_s, pod.max_requeues) == (120.0, 3)
    assert pod.gpus == 8
    assert not pod.gated
    assert pod.created_at is not None
    assert pod.deletion_timestamp is None
    assert pod.uid == fake_kube.pod("research", "llama-0")["metadata"]["uid"]  # type: ignore[index]


async def test_a_container_without_gpu_requests_counts_its_limits(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", gpus=2, gpu_limits_only=True)

    [pod], _ = await pods.list_pods()

    assert pod.gpus == 2


async def test_list_pods_filters_by_label_selector_and_namespace(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "task-a", labels=TASK_LABELS)
    fake_kube.add_pod("research", "web")
    fake_kube.add_pod("vision", "task-b", labels=TASK_LABELS)

    tasks, _ = await pods.list_pods(label_selector=TASK_LABEL)
    research_tasks, _ = await pods.list_pods(label_selector=TASK_LABEL, namespace="research")

    assert sorted(p.name for p in tasks) == ["task-a", "task-b"]
    assert [p.name for p in research_tasks] == ["task-a"]


def test_unreadable_annotations_are_treated_as_absent() -> None:
    pod = pod_info_from_json(
        {
            "metadata": {
                "name": "p",
                "namespace": "n",
                "annotations": {
                    TASK_SIZE_ANNOTATION: "zero",
                    LAST_CHECKPOINT_ANNOTATION: "yesterday",
                    CHECKPOINT_GRACE_ANNOTATION: "-5",
                    MAX_REQUEUES_ANNOTATION: "",
                },
            },
            "spec": {"containers": [{"name": "c"}]},
        }
    )

    assert (pod.task_size, pod.last_checkpoint, pod.checkpoint_grace_s, pod.max_requeues) == (
        None,
        None,
        None,
        None,
    )
    assert (pod.gpus, pod.phase) == (0, "Unknown")


def test_an_init_container_needing_more_gpus_than_the_app_sets_the_demand() -> None:
    def gpus(n: int) -> dict[str, object]:
        return {"resources": {"requests": {"nvidia.com/gpu": str(n)}}}

    pod = pod_info_from_json(
        {
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"containers": [gpus(1), gpus(1)], "initContainers": [gpus(4)]},
        }
    )

    assert pod.gpus == 4


# --- watching ---------------------------------------------------------------------------------


async def test_watch_sees_pods_added_modified_and_deleted(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p1")
    known, version = await pods.list_pods()
    watching = Watching(pods.watch_pods(version, known))
    try:
        fake_kube.add_pod("research", "p2")
        fake_kube.modify_pod("research", "p1", lambda p: p["spec"].update(nodeName="gpu-1"))
        fake_kube.add_pod("research", "p3")
        fake_kube.remove_pod("research", "p3")

        events = await watching.until(4)
    finally:
        await watching.close()

    assert events == [("ADDED", "p2"), ("MODIFIED", "p1"), ("ADDED", "p3"), ("DELETED", "p3")]


async def test_watch_honours_the_label_selector(fake_kube: FakeKube, pods: KubePods) -> None:
    _, version = await pods.list_pods(label_selector=TASK_LABEL)
    watching = Watching(pods.watch_pods(version, label_selector=TASK_LABEL))
    try:
        fake_kube.add_pod("research", "web")
        fake_kube.add_pod("research", "task", labels=TASK_LABELS)

        events = await watching.until(1)
    finally:
        await watching.close()

    assert events == [("ADDED", "task")]


async def test_watch_relists_on_410_gone_and_reports_what_changed_meanwhile(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "kept")
    fake_kube.add_pod("research", "changed")
    fake_kube.add_pod("research", "deleted")
    known, version = await pods.list_pods()
    fake_kube.add_pod("research", "added")
    fake_kube.modify_pod("research", "changed", lambda p: p["spec"].update(nodeName="gpu-1"))
    fake_kube.remove_pod("research", "deleted")
    fake_kube.forget_history()  # the watch cannot resume from `version` any more

    watching = Watching(pods.watch_pods(version, known))
    try:
        events = await watching.until(3)
        fake_kube.add_pod("research", "later")
        events = await watching.until(4)
    finally:
        await watching.close()

    assert sorted(events[:3]) == [
        ("ADDED", "added"),
        ("DELETED", "deleted"),
        ("MODIFIED", "changed"),
    ]
    assert events[3] == ("ADDED", "later")
    assert len(fake_kube.requests("GET", "/api/v1/pods")) >= 3  # list, expired watch, re-list


async def test_watch_resumes_from_the_last_version_when_the_stream_ends(
    fake_kube: FakeKube, kube_api_client: ApiClient
) -> None:
    pods = KubePods(kube_api_client, retry=FAST_RETRY, watch_timeout_s=1)
    fake_kube.add_pod("research", "first")
    _, version = await pods.list_pods()
    watching = Watching(pods.watch_pods(version))
    try:
        fake_kube.add_pod("research", "before")
        await watching.until(1)
        await asyncio.sleep(1.2)  # the server ends the first stream (timeoutSeconds=1)
        fake_kube.add_pod("research", "after")
        events = await watching.until(2)
    finally:
        await watching.close()

    assert events == [("ADDED", "before"), ("ADDED", "after")]
    watch_requests = [r for r in fake_kube.requests("GET", "/api/v1/pods") if r.query.get("watch")]
    assert watch_requests[-1].query["resourceVersion"] != version


async def test_watch_retries_after_a_server_error(fake_kube: FakeKube, pods: KubePods) -> None:
    _, version = await pods.list_pods()
    fake_kube.fail_next("GET", "/api/v1/pods", 500)
    watching = Watching(pods.watch_pods(version))
    try:
        fake_kube.add_pod("research", "p1")
        events = await watching.until(1)
    finally:
        await watching.close()

    assert events == [("ADDED", "p1")]


async def test_a_watch_is_observed_as_a_declared_call(
    fake_kube: FakeKube, pods: KubePods, calls: list[ApiCall]
) -> None:
    _, version = await pods.list_pods()
    watching = Watching(pods.watch_pods(version))
    fake_kube.add_pod("research", "p1")
    await watching.until(1)
    await watching.close()

    assert [(c.verb, c.resource) for c in calls] == [("list", "pods"), ("watch", "pods")]


# --- acting on pods ---------------------------------------------------------------------------


async def test_removing_the_admission_gate_keeps_the_other_gates(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod(
        "research", "p", scheduling_gates=["example.com/quota", ADMISSION_GATE, "x/y"]
    )

    result = await pods.remove_scheduling_gate("research", "p")

    pod = fake_kube.pod("research", "p")
    assert pod is not None
    assert (result.ok, result.changed) == (True, True)
    assert [g["name"] for g in pod["spec"]["schedulingGates"]] == ["example.com/quota", "x/y"]


async def test_removing_a_gate_that_moved_meanwhile_rereads_and_removes_the_right_one(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", scheduling_gates=["a", ADMISSION_GATE])

    def someone_else_removes_gate_a() -> None:
        fake_kube.modify_pod(
            "research", "p", lambda p: p["spec"].update(schedulingGates=[{"name": ADMISSION_GATE}])
        )

    fake_kube.before_next(
        "PATCH", "/api/v1/namespaces/research/pods/p", someone_else_removes_gate_a
    )

    result = await pods.remove_scheduling_gate("research", "p")

    pod = fake_kube.pod("research", "p")
    assert pod is not None
    assert result.ok
    assert pod["spec"]["schedulingGates"] == []


async def test_removing_a_gate_that_is_not_there_makes_no_write(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", scheduling_gates=["other"])

    result = await pods.remove_scheduling_gate("research", "p")

    assert (result.ok, result.changed) == (True, False)
    assert fake_kube.writes() == []


async def test_an_eviction_a_disruption_budget_refuses_is_reported_as_refused(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", node_name="gpu-1", labels={"app": "serve"})
    fake_kube.add_disruption_budget("research", "serve-pdb", "app=serve", disruptions_allowed=0)

    result = await pods.evict("research", "p", grace_seconds=60)

    assert result.outcome is EvictOutcome.REFUSED
    assert not result.ok
    assert "disruption budget" in result.detail
    assert len(fake_kube.requests("POST", "*/eviction")) == 1  # not retried: the caller decides
    assert fake_kube.pod("research", "p") is not None


async def test_an_allowed_eviction_deletes_the_pod_with_the_grace_asked_for(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", node_name="gpu-1", labels={"app": "serve"})
    fake_kube.add_disruption_budget("research", "serve-pdb", "app=serve", disruptions_allowed=1)

    result = await pods.evict("research", "p", grace_seconds=60)

    pod = fake_kube.pod("research", "p")
    assert result.outcome is EvictOutcome.EVICTED
    assert pod is not None
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 60


async def test_evicting_a_pod_that_is_gone_says_so(pods: KubePods) -> None:
    result = await pods.evict("research", "ghost", grace_seconds=30)

    assert result.outcome is EvictOutcome.GONE
    assert result.ok


async def test_force_delete_removes_a_pod_at_once(fake_kube: FakeKube, pods: KubePods) -> None:
    fake_kube.add_pod("research", "p", node_name="dead-node")

    result = await pods.force_delete("research", "p")

    [request] = fake_kube.requests("DELETE")
    assert (result.ok, result.changed) == (True, True)
    assert fake_kube.pod("research", "p") is None
    assert request.query["gracePeriodSeconds"] == "0"


async def test_force_deleting_a_pod_already_gone_is_ok_and_changes_nothing(
    pods: KubePods,
) -> None:
    result = await pods.force_delete("research", "ghost")

    assert (result.ok, result.changed) == (True, False)


async def test_annotate_sets_and_removes_annotations(fake_kube: FakeKube, pods: KubePods) -> None:
    fake_kube.add_pod("research", "p", annotations={"keep": "1", "drop": "2"})

    result = await pods.annotate("research", "p", {"gpuwarden.io/requeues": "1", "drop": None})

    pod = fake_kube.pod("research", "p")
    assert pod is not None
    assert result.changed
    assert pod["metadata"]["annotations"] == {"keep": "1", "gpuwarden.io/requeues": "1"}


async def test_annotating_with_what_is_already_there_makes_no_write(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p", annotations={"gpuwarden.io/requeues": "1"})

    result = await pods.annotate("research", "p", {"gpuwarden.io/requeues": "1", "absent": None})

    assert (result.ok, result.changed) == (True, False)
    assert fake_kube.writes() == []


async def test_acting_on_a_missing_pod_gives_not_ok(pods: KubePods) -> None:
    gate = await pods.remove_scheduling_gate("research", "ghost")
    annotated = await pods.annotate("research", "ghost", {"a": "b"})

    assert (gate.ok, annotated.ok) == (False, False)
    assert "gone" in gate.detail


async def test_record_event_is_about_the_pod_in_its_namespace(
    fake_kube: FakeKube, pods: KubePods
) -> None:
    fake_kube.add_pod("research", "p")
    [pod], _ = await pods.list_pods()

    result = await pods.record_event(
        pod.ref, EventReason.TASK_REQUEUED, "node gpu-1 failed; requeued (1/3)", EventType.WARNING
    )

    [event] = fake_kube.events()
    assert result.ok
    assert event["metadata"]["namespace"] == "research"
    assert (event["reason"], event["type"]) == ("TaskRequeued", "Warning")
    assert event["involvedObject"] == {
        "kind": "Pod",
        "name": "p",
        "namespace": "research",
        "uid": pod.uid,
        "apiVersion": "v1",
    }
