"""Task governance on Kubernetes: pods -> tasks (pure), and the governor end to end against
the fake API server with the real client (gates, evictions, force deletes, events, audit)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry

from coordinator.audit import AuditKind, AuditLog, AuditRecord
from coordinator.backends.kubernetes.client import RetryPolicy, api_client_for_url, close_api_client
from coordinator.backends.kubernetes.governor import GovernorSettings, KubeGovernor
from coordinator.backends.kubernetes.pod_api import KubePods
from coordinator.governance import Policy
from coordinator.pods import (
    ADMISSION_GATE,
    CHECKPOINT_GRACE_ANNOTATION,
    LAST_CHECKPOINT_ANNOTATION,
    PREEMPTIONS_ANNOTATION,
    PRIORITY_CLASS_LABEL,
    QUEUED_AT_ANNOTATION,
    REQUEUES_ANNOTATION,
    TASK_LABEL,
    TASK_SIZE_ANNOTATION,
    PodInfo,
    TaskPods,
    format_time,
    group_by_task,
    outside_governance,
    parse_time,
    pod_info_from_json,
)
from coordinator.policy_watch import PolicyFile, PolicyWatch
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    add_nodes,
    coordinator_settings,
    eventually,
    fleet,
    running_coordinator,
)
from tests.fakekube import FakeKube, running_fake_kube
from tests.governance_world import policy, team

T = TypeVar("T")

FAST_RETRY = RetryPolicy(deadline_s=3.0, request_timeout_s=2.0, base_delay_s=0.01, max_delay_s=0.05)
WAIT_S = 10.0  # a bound that keeps a broken build from hanging; it measures nothing
FAST = GovernorSettings(
    actor="coord-test",
    interval_s=0.05,
    settle_s=0.01,
    terminating_timeout_s=0.2,
    retry_base_s=0.05,
    retry_max_s=0.2,
    restart_s=0.1,
)
QUICK_REQUEUE = {"maxRequeues": 3, "backoffSeconds": 0.3, "backoffMaxSeconds": 1}
NO_GRACE = {"defaultGraceSeconds": 0}


async def until(probe: Callable[[], T], what: str, accept: Callable[[T], bool] = bool) -> T:
    deadline = time.monotonic() + WAIT_S
    while True:
        seen = probe()
        if accept(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT_S:g} s; last saw {seen!r}")
        await asyncio.sleep(0.02)


# --- pods -> tasks (pure) ---------------------------------------------------------------------


def pod(
    name: str,
    *,
    task: str | None = "t",
    gated: bool = False,
    phase: str = "Pending",
    node: str | None = None,
    gpus: int = 1,
    created: str = "2025-03-01T12:00:00Z",
    terminating: bool = False,
    annotations: Mapping[str, str] | None = None,
) -> PodInfo:
    labels = {TASK_LABEL: task} if task else {}
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "labels": labels,
        "annotations": dict(annotations or {}),
        "creationTimestamp": created,
    }
    if terminating:
        metadata["deletionTimestamp"] = "2025-03-01T13:00:00Z"
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]
    }
    if gated:
        spec["schedulingGates"] = [{"name": ADMISSION_GATE}]
    if node:
        spec["nodeName"] = node
    return pod_info_from_json({"metadata": metadata, "spec": spec, "status": {"phase": phase}})


def view(*pods: PodInfo) -> TaskPods:
    return TaskPods.of("ns", "t", pods)


def test_pods_without_the_task_label_are_not_governed() -> None:
    grouped = group_by_task([pod("a-0", task="a"), pod("a-1", task="a"), pod("web", task=None)])

    assert list(grouped) == ["ns/a"]
    assert [p.name for p in grouped["ns/a"].pods] == ["a-0", "a-1"]


def test_a_task_arrives_when_its_first_pod_was_created() -> None:
    task = view(
        pod("t-1", gated=True, created="2025-03-01T12:00:05Z"),
        pod("t-0", gated=True, created="2025-03-01T12:00:02Z"),
    )

    assert task.arrived_at == parse_time("2025-03-01T12:00:02Z")


def test_a_place_remembered_on_recreated_pods_wins_over_their_creation() -> None:
    remembered = {QUEUED_AT_ANNOTATION: "2025-03-01T11:00:00Z", REQUEUES_ANNOTATION: "2"}
    task = view(pod("t-0", gated=True, created="2025-03-01T12:30:00Z", annotations=remembered))

    assert task.arrived_at == parse_time("2025-03-01T11:00:00Z")
    assert task.requeues == 2


def test_pods_of_an_earlier_run_do_not_set_the_arrival_of_a_new_one() -> None:
    task = view(
        pod("old", phase="Succeeded", created="2025-03-01T08:00:00Z"),
        pod("new", gated=True, created="2025-03-01T12:00:00Z"),
    )

    assert task.arrived_at == parse_time("2025-03-01T12:00:00Z")


def test_a_terminating_pod_still_holds_gpus_but_is_not_admitted() -> None:
    task = view(pod("t-0", node="n1", phase="Running", terminating=True))

    assert [p.name for p in task.occupying] == ["t-0"]
    assert task.admitted == ()
    assert task.gated == ()


def test_placement_is_unknown_while_any_admitted_pod_is_unscheduled() -> None:
    scheduled = view(pod("t-0", node="n1", gpus=2), pod("t-1", node="n2", gpus=2))
    partly = view(pod("t-0", node="n1", gpus=2), pod("t-1", gpus=2))

    assert scheduled.placement() == {"n1": 2, "n2": 2}
    assert partly.placement() is None


def test_a_gang_runs_only_when_all_its_pods_run() -> None:
    size = {TASK_SIZE_ANNOTATION: "2"}
    one_running = view(
        pod("t-0", phase="Running", node="n1", annotations=size),
        pod("t-1", phase="Pending", annotations=size),
    )
    both_running = view(
        pod("t-0", phase="Running", node="n1", annotations=size),
        pod("t-1", phase="Running", node="n1", annotations=size),
    )

    assert not one_running.admitted_running()
    assert both_running.admitted_running()


def test_the_latest_checkpoint_of_any_pod_counts() -> None:
    task = view(
        pod("t-0", annotations={LAST_CHECKPOINT_ANNOTATION: "2025-03-01T12:10:00Z"}),
        pod("t-1", annotations={LAST_CHECKPOINT_ANNOTATION: "2025-03-01T12:20:00Z"}),
    )

    assert task.last_checkpoint == parse_time("2025-03-01T12:20:00Z")


def test_a_task_succeeded_only_when_every_pod_it_ran_succeeded() -> None:
    done = view(pod("t-0", phase="Succeeded"), pod("t-1", phase="Succeeded"))
    one_failed = view(pod("t-0", phase="Succeeded"), pod("t-1", phase="Failed"))
    replacement_waiting = view(pod("t-0", phase="Succeeded"), pod("t-1", gated=True))

    assert done.succeeded
    assert not one_failed.succeeded
    assert not replacement_waiting.succeeded


def test_gpu_pods_without_the_task_label_or_in_no_teams_namespace_are_outside() -> None:
    pods = [
        pod("notebook", task=None, phase="Running", node="n1", gpus=2),
        pod("stray", task="t", phase="Running", node="n2", gpus=1),  # ns is governed by no team
        pod("web", task=None, phase="Running", node="n1", gpus=0),
        pod("waiting", task=None, phase="Pending", gpus=4),  # on no node yet
        pod("done", task=None, phase="Succeeded", node="n1", gpus=4),
    ]
    outside = outside_governance(pods, governed={"other"})
    assert dict(outside.by_node) == {"n1": 2}  # the stray task's GPUs are the engine's already
    assert (outside.gpus, outside.pods, outside.namespaces) == (3, 2, ("ns",))
    assert outside_governance(pods, governed={"ns"}).gpus == 2


# --- the governor against the fake API server -------------------------------------------------


def gated(fake: FakeKube, namespace: str, name: str) -> bool:
    found = fake.pod(namespace, name)
    assert found is not None, f"pod {namespace}/{name} is gone"
    gates = found["spec"].get("schedulingGates") or []
    return any(g["name"] == ADMISSION_GATE for g in gates)


def run_on(fake: FakeKube, namespace: str, name: str, node: str) -> None:
    """The scheduler binds the pod and its kubelet starts it."""

    def start(obj: dict[str, Any]) -> None:
        obj["spec"]["nodeName"] = node
        obj["status"]["phase"] = "Running"

    fake.modify_pod(namespace, name, start)


@dataclass
class World:
    fake: FakeKube
    pods: KubePods
    audit: AuditLog
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    governor: KubeGovernor | None = None
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(
        self, policy: Policy, capacity: Mapping[str, int], settings: GovernorSettings = FAST
    ) -> KubeGovernor:
        governor = KubeGovernor(self.pods, policy, self.audit, settings, registry=self.registry)
        governor.set_capacity(dict(capacity))
        self.governor = governor
        self.spawn(governor.run())
        return governor

    def spawn(self, coroutine: Any) -> None:
        self._running.append(asyncio.create_task(coroutine))

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        async with asyncio.timeout(WAIT_S):  # a task that will not stop fails the test
            await asyncio.gather(*self._running, return_exceptions=True)

    def submit(
        self,
        namespace: str,
        task: str,
        *,
        gpus: int,
        pods: int = 1,
        cls: str = "mid",
        annotations: Mapping[str, str] | None = None,
        first: int = 0,
    ) -> list[str]:
        """Gated pods of one task, as its owner creates them."""
        names = [f"{task}-{index}" for index in range(first, first + pods)]
        for name in names:
            self.fake.add_pod(
                namespace,
                name,
                labels={TASK_LABEL: task, PRIORITY_CLASS_LABEL: cls},
                annotations=annotations,
                gpus=gpus,
                scheduling_gates=[ADMISSION_GATE],
            )
        return names

    def gated(self, namespace: str, name: str) -> bool:
        return gated(self.fake, namespace, name)

    def run_on(self, namespace: str, name: str, node: str) -> None:
        run_on(self.fake, namespace, name, node)

    def annotations(self, namespace: str, name: str) -> dict[str, str]:
        found = self.fake.pod(namespace, name)
        return dict((found or {}).get("metadata", {}).get("annotations") or {})

    def evicted(self, namespace: str, name: str) -> list[Any]:
        return self.fake.requests("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction")

    def end(self, namespace: str, name: str, phase: str = "Succeeded") -> None:
        self.fake.modify_pod(namespace, name, lambda obj: obj["status"].update(phase=phase))

    async def admitted_and_running(self, namespace: str, name: str, node: str) -> None:
        await until(lambda: not self.gated(namespace, name), f"{name} admitted")
        self.run_on(namespace, name, node)

    def task_state(self, key: str) -> str | None:
        assert self.governor is not None
        rows = [row for row in self.governor.tasks() if row["task"] == key]
        return rows[0]["state"] if rows else None

    def task_row(self, key: str) -> dict[str, Any]:
        """The task as the API shows it; empty while the governor does not know it."""
        assert self.governor is not None
        return next((row for row in self.governor.tasks() if row["task"] == key), {})

    def decisions(self, action: str | None = None, task: str | None = None) -> list[AuditRecord]:
        found = self.audit.query(kind=AuditKind.DECISION, limit=1000)
        return [
            r
            for r in reversed(found)
            if (action is None or r.action == action) and (task is None or r.task == task)
        ]

    def finished_actions(self, action: str) -> list[AuditRecord]:
        found = self.audit.query(kind=AuditKind.ACTION_FINISHED, limit=1000)
        return [r for r in reversed(found) if r.action == action]

    def events(self, reason: str, pod: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.fake.events()
            if e.get("reason", "") == reason and (pod is None or e["involvedObject"]["name"] == pod)
        ]


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


@pytest.fixture
async def world(fake: FakeKube, tmp_path: Path) -> AsyncIterator[World]:
    client = api_client_for_url(fake.url)
    pods = KubePods(client, retry=FAST_RETRY, rng=random.Random(7))
    audit = AuditLog(tmp_path / "audit.sqlite3", durable=False)
    state = World(fake, pods, audit)
    try:
        yield state
    finally:
        await state.stop()
        await pods.close()
        audit.close()
        close_api_client(client)


async def next_second() -> None:
    """Pod creation times have whole seconds: wait into the next one."""
    await asyncio.sleep(1.0 - time.time() % 1.0 + 0.02)


# admission


async def test_the_highest_priority_task_is_admitted_first_and_the_next_when_gpus_free(
    world: World,
) -> None:
    world.submit("a", "low", gpus=4, cls="low")
    world.submit("a", "high", gpus=4, cls="high")
    world.submit("a", "mid", gpus=4, cls="mid")
    await world.start(policy(team("a", 4)), {"n1": 4})

    await world.admitted_and_running("a", "high-0", "n1")
    assert world.gated("a", "low-0") and world.gated("a", "mid-0")
    world.end("a", "high-0")
    await until(lambda: not world.gated("a", "mid-0"), "mid admitted after high finished")

    assert world.gated("a", "low-0")
    assert world.task_state("a/high") == "finished"


async def test_equal_priority_tasks_are_admitted_in_order_of_arrival(world: World) -> None:
    world.submit("a", "zeta", gpus=4)
    await next_second()
    world.submit("a", "alpha", gpus=4)  # later, though first by name
    await world.start(policy(team("a", 4)), {"n1": 4})

    await until(lambda: not world.gated("a", "zeta-0"), "the first arrival admitted")

    assert world.gated("a", "alpha-0")


async def test_admission_is_audited_with_its_reason_and_announced_on_the_pod(
    world: World,
) -> None:
    world.submit("a", "t", gpus=2)
    await world.start(policy(team("a", 4)), {"n1": 4})

    await until(lambda: world.events("TaskAdmitted", "t-0"), "TaskAdmitted event")

    [admit] = world.decisions("admit", "a/t")
    assert admit.team == "a"
    assert "within team a's guarantee" in admit.reason
    [gate] = world.finished_actions("remove_admission_gate")
    assert (gate.task, gate.outcome) == ("a/t", "ok")


async def test_a_gang_is_admitted_only_once_all_its_pods_exist(world: World) -> None:
    gang = {TASK_SIZE_ANNOTATION: "2"}
    world.submit("a", "gang", gpus=2, pods=1, annotations=gang)
    governor = await world.start(policy(team("a", 8)), {"n1": 8})
    await until(
        lambda: "waiting for all 2 pods" in world.task_row("a/gang").get("reason", ""),
        "the gang waits for its second pod",
    )
    assert world.gated("a", "gang-0")

    world.submit("a", "gang", gpus=2, pods=1, annotations=gang, first=1)

    await until(
        lambda: not world.gated("a", "gang-0") and not world.gated("a", "gang-1"),
        "both pods admitted",
    )
    assert governor.tasks()[0]["gpus"] == 4


async def test_a_gang_larger_than_the_free_gpus_keeps_every_gate(world: World) -> None:
    gang = {TASK_SIZE_ANNOTATION: "2"}
    world.submit("a", "gang", gpus=4, pods=2, annotations=gang)
    await world.start(policy(team("a", 8)), {"n1": 6})

    await until(
        lambda: "8 needed" in world.task_row("a/gang").get("reason", ""),
        "the gang waits for GPUs",
    )

    assert world.gated("a", "gang-0") and world.gated("a", "gang-1")
    assert world.fake.requests("PATCH") == []


# preemption


async def borrowing(world: World) -> KubeGovernor:
    """Team b runs b1 on its own quota and b2 (grace 7 s) on GPUs borrowed from team a."""
    world.submit("b", "b1", gpus=4)
    world.submit("b", "b2", gpus=4, annotations={CHECKPOINT_GRACE_ANNOTATION: "7"})
    governor = await world.start(policy(team("a", 4), team("b", 4, limit=100)), {"n1": 8})
    await world.admitted_and_running("b", "b1-0", "n1")
    await world.admitted_and_running("b", "b2-0", "n1")
    await until(lambda: world.task_state("b/b2") == "running", "b2 running")
    return governor


async def test_a_lender_reclaims_its_gpus_by_evicting_the_borrower_with_its_grace(
    world: World,
) -> None:
    await borrowing(world)

    world.submit("a", "a1", gpus=4)
    evictions = await until(lambda: world.evicted("b", "b2-0"), "the borrower evicted")
    assert evictions[0].body["deleteOptions"]["gracePeriodSeconds"] == 7
    await until(
        lambda: "being freed by preemption" in world.task_row("a/a1").get("reason", ""),
        "a1 waits for the GPUs being freed",
    )
    assert world.gated("a", "a1-0")  # b2 is still in its grace period

    world.fake.remove_pod("b", "b2-0")  # its kubelet finished stopping it
    await until(lambda: not world.gated("a", "a1-0"), "the lender's task admitted")

    assert not world.gated("b", "b1-0")
    assert world.fake.pod("b", "b1-0") is not None  # the task within its quota is untouched


async def test_a_preemption_records_preemptor_and_victim_in_the_audit_and_an_event(
    world: World,
) -> None:
    await borrowing(world)

    world.submit("a", "a1", gpus=4)
    [event] = await until(lambda: world.events("TaskPreempted", "b2-0"), "TaskPreempted")

    assert event["type"] == "Warning"
    assert "a/a1" in event["message"]
    [preempt] = world.decisions("preempt")
    assert (preempt.task, preempt.team) == ("b/b2", "b")
    assert preempt.details["preemptor"] == "a/a1"
    assert preempt.details["cause"] == "reclaim"
    assert preempt.details["grace_s"] == 7


async def test_a_round_stopped_at_its_victim_budget_is_counted_and_the_next_goes_on(
    world: World,
) -> None:
    world.submit("b", "b1", gpus=2)
    world.submit("b", "b2", gpus=2)
    world.submit("b", "b3", gpus=2)
    world.submit("b", "b4", gpus=2)
    rules = policy(team("a", 4), team("b", 4, limit=100), preemption={"maxVictimsPerRound": 1})
    await world.start(rules, {"n1": 8})
    for name in ("b1", "b2", "b3", "b4"):
        await until(lambda n=name: world.task_state(f"b/{n}") == "admitted", f"{name} admitted")

    world.submit("a", "a1", gpus=2)
    world.submit("a", "a2", gpus=2)

    await until(lambda: world.evicted("b", "b4-0"), "the first victim evicted")
    await until(lambda: world.evicted("b", "b3-0"), "the second, in a later round")
    stopped = world.registry.get_sample_value("gpuwarden_governance_rounds_stopped_total")
    assert stopped is not None and stopped >= 1


async def test_an_eviction_a_disruption_budget_refuses_is_tried_again(world: World) -> None:
    await borrowing(world)
    world.fake.fail_next("POST", "/api/v1/namespaces/b/pods/b2-0/eviction", 429)

    world.submit("a", "a1", gpus=4)

    outcomes = await until(
        lambda: [r.outcome for r in world.finished_actions("evict_pod")],
        "a second eviction",
        lambda seen: len(seen) >= 2,
    )
    assert outcomes[:2] == ["refused", "evicted"]


async def test_a_preempted_task_recreated_by_its_owner_returns_when_gpus_free_again(
    world: World,
) -> None:
    await borrowing(world)
    world.submit("a", "a1", gpus=4)
    await until(lambda: world.evicted("b", "b2-0"), "the borrower evicted")
    world.fake.remove_pod("b", "b2-0")
    await world.admitted_and_running("a", "a1-0", "n1")

    world.submit("b", "b2", gpus=4, first=1)  # its owner recreates it, gated
    await until(
        lambda: world.annotations("b", "b2-1").get(PREEMPTIONS_ANNOTATION) == "1",
        "the recreated pod carries the task's preemption",
    )
    assert world.gated("b", "b2-1")
    world.end("a", "a1-0")

    await until(lambda: not world.gated("b", "b2-1"), "b2 admitted again")
    assert world.task_row("b/b2")["times_preempted"] == 1


async def borrowing_with_grace(world: World, grace: str) -> None:
    """As :func:`borrowing`, b2 asking for ``grace`` as its checkpoint grace."""
    world.submit("b", "b1", gpus=4)
    world.submit("b", "b2", gpus=4, annotations={CHECKPOINT_GRACE_ANNOTATION: grace})
    await world.start(policy(team("a", 4), team("b", 4, limit=100)), {"n1": 8})
    await world.admitted_and_running("b", "b1-0", "n1")
    await world.admitted_and_running("b", "b2-0", "n1")
    await until(lambda: world.task_state("b/b2") == "running", "b2 running")


async def test_a_grace_above_the_policy_maximum_is_capped_and_the_pod_told(world: World) -> None:
    await borrowing_with_grace(world, "864000")
    [event] = await until(lambda: world.events("CheckpointGraceAdjusted", "b2-0"), "an event")
    assert event["type"] == "Warning"
    assert "600 s is used instead" in event["message"]

    world.submit("a", "a1", gpus=4)
    evictions = await until(lambda: world.evicted("b", "b2-0"), "the borrower evicted")
    assert evictions[0].body["deleteOptions"]["gracePeriodSeconds"] == 600


async def test_a_grace_that_is_not_a_number_is_refused_and_the_pod_told_what_is_used(
    world: World,
) -> None:
    await borrowing_with_grace(world, "ten minutes")
    [event] = await until(lambda: world.events("CheckpointGraceAdjusted", "b2-0"), "an event")
    assert "'ten minutes' is not a number of seconds" in event["message"]
    assert "30 s is used instead" in event["message"]

    world.submit("a", "a1", gpus=4)
    evictions = await until(lambda: world.evicted("b", "b2-0"), "the borrower evicted")
    assert evictions[0].body["deleteOptions"]["gracePeriodSeconds"] == 30


async def test_a_negative_grace_is_refused_once_per_pod(world: World) -> None:
    await borrowing_with_grace(world, "-5")
    await until(lambda: world.events("CheckpointGraceAdjusted", "b2-0"), "an event")
    await asyncio.sleep(0.3)  # several rounds
    [event] = world.events("CheckpointGraceAdjusted", "b2-0")
    assert "negative" in event["message"]


# admitted pods that never run (Kueue's waitForPodsReady)


async def test_an_admitted_task_whose_pods_never_run_is_requeued_counted_audited_and_told(
    world: World,
) -> None:
    world.submit("a", "stuck", gpus=4)
    rules = policy(
        team("a", 8),
        requeue={**QUICK_REQUEUE, "admittedTimeoutSeconds": 0.5},
        preemption=NO_GRACE,
    )
    await world.start(rules, {"n1": 8})
    await until(lambda: not world.gated("a", "stuck-0"), "stuck admitted")  # never scheduled

    await until(lambda: world.evicted("a", "stuck-0"), "its pod removed")
    [requeue] = await until(lambda: world.decisions("requeue", "a/stuck"), "the requeue audited")
    assert requeue.details["cause"] == "admitted-timeout"
    assert requeue.details["requeues"] == 1
    [event] = await until(lambda: world.events("TaskRequeued", "stuck-0"), "an event")
    assert "not all running" in event["message"]
    assert world.task_row("a/stuck")["requeues"] == 1
    assert world.task_row("a/stuck")["state"] == "requeued"


# GPU pods outside governance


async def test_gpu_pods_outside_governance_are_left_out_of_the_capacity_handed_out(
    world: World,
) -> None:
    world.fake.add_pod("ml", "notebook", node_name="n1", phase="Running", gpus=4)
    world.submit("a", "whole", gpus=8)
    await world.start(policy(team("a", 8)), {"n1": 8})
    await until(lambda: world.task_state("a/whole") == "pending", "the task seen")
    await asyncio.sleep(0.3)  # several rounds
    assert world.gated("a", "whole-0")  # 4 of n1's 8 GPUs are the notebook's

    world.submit("a", "half", gpus=4)
    await until(lambda: not world.gated("a", "half-0"), "the other 4 handed out")


async def test_gpu_pods_outside_governance_show_in_the_teams_view(world: World) -> None:
    world.fake.add_pod("ml", "notebook", node_name="n1", phase="Running", gpus=4)
    world.fake.add_pod("web", "frontend", node_name="n1", phase="Running")  # no GPU
    governor = await world.start(policy(team("a", 8)), {"n1": 8})

    rows = await until(
        lambda: [row for row in governor.teams() if row["name"] == "outside governance"],
        "an outside-governance row",
    )
    assert rows[0]["allocated"] == 4
    assert rows[0]["outside_governance"] is True
    assert rows[0]["namespaces"] == ["ml"]


# node faults


async def running_task(world: World, annotations: Mapping[str, str] | None = None) -> None:
    world.submit("a", "t", gpus=4, annotations=annotations)
    await world.admitted_and_running("a", "t-0", "n1")
    await until(lambda: world.task_state("a/t") == "running", "t running")


async def test_a_pod_left_terminating_on_a_failed_node_is_force_deleted_after_its_grace(
    world: World,
) -> None:
    governor = await world.start(policy(team("a", 8), requeue=QUICK_REQUEUE), {"n1": 4, "n2": 4})
    await running_task(world, {CHECKPOINT_GRACE_ANNOTATION: "1"})

    await governor.on_node_out("n1", "XID 79: GPU fell off the bus")

    await until(lambda: world.fake.pod("a", "t-0") is None, "the pod force-deleted")
    [eviction] = world.evicted("a", "t-0")
    assert eviction.body["deleteOptions"]["gracePeriodSeconds"] == 1
    [delete] = world.fake.requests("DELETE", "/api/v1/namespaces/a/pods/t-0")
    assert delete.query["gracePeriodSeconds"] == "0"


async def test_a_disruption_budget_cannot_keep_a_pod_on_a_failed_node(world: World) -> None:
    governor = await world.start(policy(team("a", 8), requeue=QUICK_REQUEUE), {"n1": 4, "n2": 4})
    await running_task(world, {CHECKPOINT_GRACE_ANNOTATION: "30"})
    world.fake.fail_next("POST", "/api/v1/namespaces/a/pods/t-0/eviction", 429)

    await governor.on_node_out("n1", "XID 79")

    await until(lambda: world.fake.pod("a", "t-0") is None, "the pod force-deleted")


async def test_a_node_fault_requeue_is_counted_audited_and_announced(world: World) -> None:
    governor = await world.start(
        policy(team("a", 8), requeue=QUICK_REQUEUE, preemption=NO_GRACE), {"n1": 4, "n2": 4}
    )
    await running_task(world)

    await governor.on_node_out("n1", "XID 79")

    [requeue] = world.decisions("requeue", "a/t")
    assert requeue.details["failed_node"] == "n1"
    assert (requeue.details["requeues"], requeue.details["max_requeues"]) == (1, 3)
    assert requeue.node is None  # node lifecycles are rebuilt from decisions that name nodes
    [event] = await until(lambda: world.events("TaskRequeued", "t-0"), "TaskRequeued")
    assert event["type"] == "Warning"
    assert world.task_row("a/t")["requeues"] == 1


async def test_recreated_pods_join_the_requeued_task_and_wait_out_its_backoff(
    world: World,
) -> None:
    governor = await world.start(
        policy(team("a", 8), requeue=QUICK_REQUEUE, preemption=NO_GRACE), {"n1": 4, "n2": 4}
    )
    await running_task(world)
    queued_at = world.task_row("a/t")["queued_at"]
    await governor.on_node_out("n1", "XID 79")
    await until(lambda: world.fake.pod("a", "t-0") is None, "the pod evicted")

    world.submit("a", "t", gpus=4, first=1)  # the owner recreates it
    await until(lambda: not world.gated("a", "t-1"), "the recreated pod admitted")

    requeue = world.decisions("requeue", "a/t")[0]
    readmission = world.decisions("admit", "a/t")[-1]
    assert readmission.ts >= requeue.details["backoff_until"]
    row = world.task_row("a/t")
    assert (row["queued_at"], row["requeues"]) == (queued_at, 1)
    annotations = world.annotations("a", "t-1")
    assert annotations[REQUEUES_ANNOTATION] == "1"
    assert annotations[QUEUED_AT_ANNOTATION] == format_time(queued_at)


async def test_past_its_max_requeues_a_task_fails_with_an_event_and_its_new_pods_stay_gated(
    world: World,
) -> None:
    no_requeue = {**QUICK_REQUEUE, "maxRequeues": 0}
    governor = await world.start(
        policy(team("a", 8), requeue=no_requeue, preemption=NO_GRACE), {"n1": 4, "n2": 4}
    )
    await running_task(world)

    await governor.on_node_out("n1", "XID 79")
    [fail] = world.decisions("fail", "a/t")
    assert "max 0" in fail.reason
    [event] = await until(lambda: world.events("TaskRequeued", "t-0"), "the failure event")
    assert event["type"] == "Warning" and "failed" in event["message"]
    assert world.task_state("a/t") == "failed"

    world.submit("a", "t", gpus=4, first=1)
    await until(lambda: world.events("TaskRequeued", "t-1"), "the new pod told why it waits")

    assert world.gated("a", "t-1")


async def test_a_requeued_task_whose_pods_never_come_back_is_dropped(world: World) -> None:
    settings = replace(FAST, pods_return_s=0.3)
    governor = await world.start(
        policy(team("a", 8), requeue=QUICK_REQUEUE, preemption=NO_GRACE),
        {"n1": 4, "n2": 4},
        settings,
    )
    await running_task(world)

    await governor.on_node_out("n1", "XID 79")

    await until(lambda: world.task_state("a/t") is None, "the task dropped")
    [drop] = world.decisions("drop", "a/t")
    assert "no pods for 0.3 s" in drop.reason


async def test_a_replacement_for_a_crashed_pod_of_a_running_gang_is_admitted_at_once(
    world: World,
) -> None:
    gang = {TASK_SIZE_ANNOTATION: "2"}
    world.submit("a", "g", gpus=2, pods=2, annotations=gang)
    await world.start(policy(team("a", 4)), {"n1": 4})
    await world.admitted_and_running("a", "g-0", "n1")
    await world.admitted_and_running("a", "g-1", "n1")
    await until(lambda: world.task_state("a/g") == "running", "the gang running")

    world.end("a", "g-1", "Failed")
    world.submit("a", "g", gpus=2, pods=1, annotations=gang, first=2)

    await until(lambda: not world.gated("a", "g-2"), "the replacement admitted")
    assert world.task_state("a/g") == "running"


async def test_a_checkpoint_recorded_on_a_running_pod_becomes_the_tasks_last_checkpoint(
    world: World,
) -> None:
    await world.start(policy(team("a", 8)), {"n1": 4})
    await running_task(world)

    world.fake.modify_pod(
        "a",
        "t-0",
        lambda p: (
            p["metadata"]
            .setdefault("annotations", {})
            .update({LAST_CHECKPOINT_ANNOTATION: format_time(time.time())})
        ),
    )

    await until(lambda: world.task_row("a/t")["last_checkpoint"], "the checkpoint seen")


async def test_pods_running_without_the_gate_take_their_gpus_from_the_queue(
    world: World,
) -> None:
    world.fake.add_pod("a", "rogue-0", labels={TASK_LABEL: "rogue"}, gpus=4, node_name="n1")
    world.submit("a", "t", gpus=4)
    await world.start(policy(team("a", 8)), {"n1": 4})

    await until(lambda: "only 0 idle GPUs" in world.task_row("a/t").get("reason", ""), "t waits")

    assert world.gated("a", "t-0")
    [adopted] = world.decisions("adopt", "a/rogue")
    assert "no admission gate" in adopted.reason


# policy, dry run, restart, metrics


async def test_a_policy_reload_changes_a_quota_and_the_next_decision_follows_it(
    world: World, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(_policy_yaml(quota=4))
    policy_file = PolicyFile.load(path)
    world.submit("a", "big", gpus=6)
    governor = await world.start(policy_file.policy, {"n1": 8})
    watch = PolicyWatch(policy_file, governor.set_policy, world.audit, actor="t", interval_s=0.05)
    world.spawn(watch.run())
    await until(lambda: "cannot borrow" in world.task_row("a/big").get("reason", ""), "big waits")

    path.write_text(_policy_yaml(quota=8))

    await until(lambda: not world.gated("a", "big-0"), "big admitted under the new quota")
    [reload] = world.audit.query(kind=AuditKind.POLICY)
    assert "teams[a].quota.gpus: 4 -> 8" in reload.reason


def _policy_yaml(quota: int) -> str:
    return (
        "admission: task-ranking\n"
        "teams:\n"
        f"  - {{name: a, namespace: a, quota: {{gpus: {quota}}}, lending: lend}}\n"
    )


async def test_a_dry_run_decides_and_audits_but_changes_no_pod(world: World) -> None:
    world.submit("a", "t", gpus=2)
    await world.start(policy(team("a", 4)), {"n1": 4}, replace(FAST, dry_run=True))

    [admit] = await until(lambda: world.decisions("admit", "a/t"), "the admission decided")

    assert admit.dry_run
    assert world.gated("a", "t-0")
    assert world.fake.writes() == []


async def test_a_new_governor_adopts_running_pods_and_reads_the_queue_memory_of_waiting_ones(
    world: World,
) -> None:
    world.submit("a", "run", gpus=4)
    world.fake.modify_pod("a", "run-0", lambda p: p["spec"].pop("schedulingGates"))
    world.run_on("a", "run-0", "n1")
    memory = {QUEUED_AT_ANNOTATION: "2025-03-01T11:00:00Z", REQUEUES_ANNOTATION: "2"}
    world.submit("a", "back", gpus=4, annotations=memory)

    await world.start(policy(team("a", 8)), {})  # no capacity: nothing is admitted

    await until(lambda: world.task_state("a/back") == "requeued", "back is requeued")
    running = world.task_row("a/run")
    assert (running["state"], running["nodes"]) == ("running", {"n1": 4})
    back = world.task_row("a/back")
    assert (back["requeues"], back["queued_at"]) == (2, parse_time("2025-03-01T11:00:00Z"))


async def test_team_and_class_numbers_are_exported_on_the_registry(world: World) -> None:
    world.submit("a", "t", gpus=4, cls="high")
    world.submit("a", "w", gpus=4, cls="low")
    await world.start(policy(team("a", 4)), {"n1": 4})
    await world.admitted_and_running("a", "t-0", "n1")
    await until(lambda: world.task_state("a/t") == "running", "t running")

    def sample(name: str, **labels: str) -> float | None:
        return world.registry.get_sample_value(name, labels)

    assert sample("gpuwarden_team_gpus", team="a", kind="in_use") == 4
    assert sample("gpuwarden_team_pending_tasks", team="a") == 1
    assert sample("gpuwarden_class_tasks", priority_class="high", state="running") == 1
    assert sample("gpuwarden_class_tasks", priority_class="low", state="pending") == 1
    assert sample("gpuwarden_task_decisions_total", decision="admit", team="a") == 1
    assert sample("gpuwarden_tasks", state="running") == 1


# the coordinator, wired by `gpuwarden coordinator --policy ... --kube ...`


@pytest.mark.broker
async def test_the_coordinator_with_a_policy_admits_pods_and_requeues_them_off_a_failed_node(
    mosquitto: Mosquitto, fake: FakeKube, tmp_path: Path
) -> None:
    add_nodes(fake, "gpu-1", "gpu-2")
    path = tmp_path / "policy.yaml"
    path.write_text(
        "preemption: {defaultGraceSeconds: 0}\n"
        "requeue: {maxRequeues: 2, backoffSeconds: 0.2, backoffMaxSeconds: 1}\n"
        "teams:\n  - {name: a, namespace: a, quota: {gpus: 4}}\n"
    )
    flags = ["--max-unhealthy", "1", "--policy", str(path)]
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=fake, flags=flags)
    fake.add_pod("a", "t-0", labels={TASK_LABEL: "t"}, gpus=2, scheduling_gates=[ADMISSION_GATE])
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")  # two GPUs each: capacity for the task
        await until(lambda: not gated(fake, "a", "t-0"), "the task admitted")
        run_on(fake, "a", "t-0", "gpu-1")
        await eventually(
            lambda: coordinator.api.get("/api/v1/teams"),
            lambda body: body["teams"][0]["in_use"] == 2,
            what="team a using 2 GPUs",
        )

        await agents.fault("gpu-1")

        await until(lambda: fake.pod("a", "t-0") is None, "the task's pod evicted")
        audit = await coordinator.api.audit()
    requeues = [e for e in audit if e["kind"] == "decision" and e["action"] == "requeue"]
    assert [(e["task"], e["details"]["failed_node"]) for e in requeues] == [("a/t", "gpu-1")]
