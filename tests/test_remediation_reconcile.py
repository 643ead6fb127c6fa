"""The cluster ends up marked as the coordinator decided, whatever breaks on the way: a failed
action before a crash, a leader killed half-way through a mark, a crash during the Event POST,
a leadership lost and regained while an action runs. One decision per transition, one Event
per fact, one finish per started action."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from coordinator.actuators import ActionResult, MarkFact, NodeFacts, NodeMark
from coordinator.alerts import AlertSender
from coordinator.audit import AuditKind, AuditLog
from coordinator.backends.kubernetes.contract import (
    CORDONED_BY_ANNOTATION,
    GPU_CONDITION,
    HEALTH_LABEL,
)
from coordinator.lifecycle import LifecycleConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import ClusterModel
from coordinator.remediator import RemediationConfig, Remediator
from coordinator.safety import SafetyGate
from coordinator.settings import CoordinatorSettings
from gpuwarden_common.health import Action, Health
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    LEASE_NAMESPACE,
    SHORT_LEASE,
    ElectedCoordinator,
    FakeAgent,
    add_nodes,
    coordinator_argv,
    coordinator_settings,
    elected_coordinator,
    eventually,
    fleet,
    running_coordinator,
)
from tests.coordinator_process import coordinator_process
from tests.fakekube import FakeKube, running_fake_kube

TAINT = {"key": "gpuwarden.io/unhealthy", "effect": "NoSchedule"}
PENDING_REBOOT = "UnschedulablePendingReboot"
# the reason the fleet's XID 79 on GPU 0 gives, at whatever time the test runs
FAULT_TEXT = re.compile(r"XID 79 on GPU 0 at \d\d:\d\d UTC")
# A decision round is a second long: waiting this long shows nothing more is coming.
QUIET_S = 2.0
EVENTS = f"/api/v1/namespaces/{LEASE_NAMESPACE}/events"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases*"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


def _events(kube: FakeKube, node: str) -> list[dict[str, Any]]:
    return [e for e in kube.events() if e["involvedObject"]["name"] == node]


def _gpu_conditions(kube: FakeKube, node: str) -> list[dict[str, Any]]:
    return [c for c in kube.node(node)["status"]["conditions"] if c["type"] == GPU_CONDITION]


def _fully_marked(kube: FakeKube, node: str) -> bool:
    """Label, cordon with our claim, taint, GPUHealthy=False and exactly one Event."""
    found = kube.node(node)
    return (
        found["metadata"].get("labels", {}).get(HEALTH_LABEL) == PENDING_REBOOT
        and found["spec"].get("unschedulable") is True
        and CORDONED_BY_ANNOTATION in found["metadata"].get("annotations", {})
        and TAINT in found["spec"].get("taints", [])
        and [c["status"] for c in _gpu_conditions(kube, node)] == ["False"]
        and len(_events(kube, node)) == 1
    )


def _pairs(audit: list[dict[str, Any]]) -> tuple[list[int], list[int | None]]:
    started = [e["id"] for e in audit if e["kind"] == "action_started"]
    finished = [e["started_id"] for e in audit if e["kind"] == "action_finished"]
    return started, finished


@pytest.mark.broker
@pytest.mark.slow
async def test_a_mark_that_failed_before_a_crash_is_applied_after_the_restart(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    state = tmp_path / "state"

    def settings() -> CoordinatorSettings:
        return coordinator_settings(
            tmp_path, broker_url=mosquitto.url, kube=kube, state_dir=state,
            flags=["--max-unhealthy", "1"],
        )  # fmt: skip

    async with fleet(mosquitto.port) as agents:
        async with running_coordinator(settings()) as first:
            await agents.join("gpu-1", "gpu-2")
            await eventually(lambda: first.api.lifecycle("gpu-1"), lambda s: s == "healthy")
            kube.fail_next("PATCH", "/api/v1/nodes/gpu-1", 409, times=100_000)
            await agents.fault("gpu-1")
            await eventually(
                lambda: first.api.audit("gpu-1"),
                lambda audit: any(e["outcome"] == "failed" for e in audit),
                what="the mark failing (409 until the retries gave up)",
            )
            await first.cancel()
        kube.clear_faults()
        async with running_coordinator(settings()) as second:
            await eventually(
                lambda: asyncio.to_thread(_fully_marked, kube, "gpu-1"),
                what="gpu-1 fully marked by the restarted coordinator",
            )
            lifecycle = await second.api.lifecycle("gpu-1")

    assert lifecycle == "pending-reboot"
    assert FAULT_TEXT.fullmatch(_gpu_conditions(kube, "gpu-1")[0]["message"])


async def _until_acting(candidate: ElectedCoordinator) -> None:
    async def acting() -> bool:
        return candidate.coordinator.acting

    await eventually(acting, what=f"{candidate.name} acting")


@pytest.mark.broker
@pytest.mark.slow
async def test_a_new_leader_finishes_a_mark_its_predecessor_died_in_the_middle_of(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    names = ("gpu-1", "gpu-2", "gpu-3", "gpu-4")
    add_nodes(kube, *names)

    def settings(identity: str) -> CoordinatorSettings:
        return coordinator_settings(
            tmp_path, broker_url=mosquitto.url, kube=kube, identity=identity,
            flags=["--max-unhealthy", "2", "--http", "off"],
        )  # fmt: skip

    status_patch = "/api/v1/nodes/gpu-1/status"
    async with (
        fleet(mosquitto.port) as agents,
        elected_coordinator(settings("coord-a"), kube) as leader,
    ):
        await _until_acting(leader)
        async with elected_coordinator(settings("coord-b"), kube) as standby:
            await agents.join(*names)
            kube.fail_next("PATCH", status_patch, 500, times=100_000)
            await agents.fault("gpu-1")
            await eventually(
                lambda: asyncio.to_thread(kube.requests, "PATCH", status_patch),
                lambda sent: any(r.status == 500 for r in sent),
                what="the leader between its node PATCH and its status PATCH",
            )
            await leader.crash()
            kube.clear_faults()
            await eventually(
                lambda: asyncio.to_thread(_fully_marked, kube, "gpu-1"),
                within=SHORT_LEASE.lease_duration_s + 15,
                what="the standby finishing gpu-1's marks",
            )
            await asyncio.sleep(QUIET_S)
            standby_acting = standby.coordinator.acting

    assert standby_acting
    [condition] = _gpu_conditions(kube, "gpu-1")
    assert FAULT_TEXT.fullmatch(condition["message"])
    [event] = _events(kube, "gpu-1")
    assert FAULT_TEXT.search(event["message"])


@pytest.mark.broker
@pytest.mark.slow
async def test_a_coordinator_killed_during_the_event_post_gets_the_one_event_in_after_restart(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    argv = coordinator_argv(
        tmp_path, broker_url=mosquitto.url, kube=kube, state_dir=tmp_path / "state",
        flags=["--max-unhealthy", "1"],
    )  # fmt: skip
    async with fleet(mosquitto.port) as agents:
        with coordinator_process(argv, tmp_path, "first") as first:
            await first.until_leading()
            await agents.join("gpu-1", "gpu-2")
            await eventually(lambda: first.api.lifecycle("gpu-1"), lambda s: s == "healthy")
            # the POST is never carried out: the server answers it only after the kill
            kube.fail_next("POST", EVENTS, 500, delay_s=3.0)
            await agents.fault("gpu-1")
            await eventually(
                lambda: asyncio.to_thread(kube.requests, "POST", EVENTS),
                lambda sent: [r.status for r in sent] == [0],
                what="the Event POST in flight",
            )
            first.kill()
        # the lease a killed leader holds runs out (made to, rather than waited for)
        kube.modify_lease(LEASE_NAMESPACE, "gpuwarden-coordinator",
                          lambda lease: lease["spec"].update(holderIdentity=None))  # fmt: skip
        with coordinator_process(argv, tmp_path, "second") as second:
            await second.until_leading()
            await eventually(
                lambda: asyncio.to_thread(_fully_marked, kube, "gpu-1"),
                what="gpu-1 fully marked, its one Event included",
            )
            await asyncio.sleep(QUIET_S)
            audit = await second.api.audit("gpu-1")

    [event] = _events(kube, "gpu-1")
    assert FAULT_TEXT.search(event["message"])
    started, finished = _pairs(audit)
    assert sorted(f for f in finished if f is not None) == started  # each start closed once
    assert [e["action"] for e in audit if e["kind"] == "decision"] == ["pending-reboot"]


@pytest.mark.broker
@pytest.mark.slow
async def test_leadership_lost_and_regained_mid_action_finishes_it_once_with_one_event(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    node_patch = "/api/v1/nodes/gpu-1"
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube,
        flags=["--max-unhealthy", "1", "--http", "off"],
    )  # fmt: skip
    async with (
        fleet(mosquitto.port) as agents,
        elected_coordinator(settings, kube) as leader,
    ):
        await _until_acting(leader)
        await agents.join("gpu-1", "gpu-2")
        await eventually(
            lambda: _lifecycle(leader, "gpu-1"), lambda s: s == "healthy", what="gpu-1 up"
        )
        # an API server outage: the mark keeps failing, and so does the lease renewal
        kube.fail_next("PATCH", node_patch, 500, times=100_000)
        kube.fail_next("*", LEASES, 500, times=100_000)
        await agents.fault("gpu-1")
        await eventually(
            lambda: _acting(leader), lambda acting: not acting, what="the lease lost"
        )
        kube.clear_faults(LEASES)
        await eventually(lambda: _acting(leader), what="the lease regained")
        await asyncio.sleep(QUIET_S)  # what a regain would replay, it replays now
        kube.clear_faults()
        await eventually(
            lambda: asyncio.to_thread(_fully_marked, kube, "gpu-1"), what="gpu-1 marked"
        )
        await asyncio.sleep(QUIET_S)
        audit = leader.coordinator.audit_log.query(node="gpu-1", limit=100)

    kinds = [r.kind for r in audit]
    started = [r.id for r in audit if r.kind is AuditKind.ACTION_STARTED]
    finished = [r.started_id for r in audit if r.kind is AuditKind.ACTION_FINISHED]
    assert kinds.count(AuditKind.DECISION) == 1
    assert sorted(f for f in finished if f is not None) == sorted(started)
    assert not any("replayed" in r.reason for r in audit)
    assert len(_events(kube, "gpu-1")) == 1


async def _lifecycle(candidate: ElectedCoordinator, node: str) -> str | None:
    record = candidate.coordinator.model.node(node)
    return None if record is None else record.lifecycle.value


async def _acting(candidate: ElectedCoordinator) -> bool:
    return candidate.coordinator.acting


# --- retries, on their own --------------------------------------------------------------------


class SlowFailingActuator:
    """Takes ``took_s`` of the coordinator's (shifted) clock per attempt and fails the first
    ``failures`` attempts, remembering when each attempt started and ended."""

    name = "scripted"

    def __init__(self, clock: ShiftedClock, took_s: float, failures: int) -> None:
        self.clock = clock
        self.took_s = took_s
        self.failures = failures
        self.attempts: list[tuple[float, float]] = []

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        began = self.clock()
        self.clock.shift += self.took_s
        self.attempts.append((began, self.clock()))
        if len(self.attempts) <= self.failures:
            return ActionResult(ok=False, changed=False, detail="API server timed out")
        return ActionResult(ok=True, changed=True, detail="marked")

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        return ActionResult(ok=True, changed=False)

    async def node_facts(self, node: str) -> NodeFacts:
        return NodeFacts(name=node)

    async def list_marked(self) -> list[NodeFacts]:
        return []

    async def list_nodes(self) -> frozenset[str] | None:
        return None

    async def close(self) -> None:
        return None


class ShiftedClock:
    """Wall time plus a shift a test can jump forward (an attempt that "took 30 s")."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


async def test_a_retry_waits_its_backoff_from_the_failure_and_is_no_new_decision(
    tmp_path: Path,
) -> None:
    clock = ShiftedClock()
    actuator = SlowFailingActuator(clock, took_s=30.0, failures=1)
    model = ClusterModel()
    registry = CollectorRegistry()
    agent = FakeAgent("gpu-1", health=Health.UNHEALTHY, action=Action.REBOOT)
    model.apply_state(agent.state(), clock())
    with AuditLog(tmp_path / "audit.sqlite3") as audit:
        remediator = Remediator(
            model, actuator, audit, SafetyGate("1"), AlertSender(None, registry=registry),
            CoordinatorMetrics(registry),
            RemediationConfig(actor="test", lifecycle=LifecycleConfig(), retry_after_s=2.0),
            clock=clock,
        )  # fmt: skip
        task = asyncio.create_task(remediator.run())
        try:
            await eventually(
                lambda: _count(actuator.attempts), lambda n: n >= 2, what="a second attempt"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        decisions = audit.query(kind=AuditKind.DECISION)

    (_, failed_at), (retried_at, _) = actuator.attempts[:2]
    # equal-jitter backoff: at least half the base delay after the failure
    assert retried_at - failed_at >= 1.0
    assert len(decisions) == 1


async def _count(items: list[Any]) -> int:
    return len(items)
