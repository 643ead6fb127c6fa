"""Coordinators that stop at the worst moment: a restart in the middle of an action, a
leader that dies holding the Lease while a standby waits, and a cancel that lands just as
news arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.actuators import NodeMark
from coordinator.audit import AuditKind, AuditLog, AuditRecord
from coordinator.backends.kubernetes.contract import (
    CORDONED_BY_ANNOTATION,
    GPU_CONDITION,
    HEALTH_LABEL,
)
from coordinator.backends.local.actuator import LocalActuator
from coordinator.daemon import Coordinator
from coordinator.settings import CoordinatorSettings
from tests.brokers import Mosquitto, free_port
from tests.coordinator_harness import (
    LEASE_NAMESPACE,
    SHORT_LEASE,
    WAIT_S,
    ActuatorCall,
    ElectedCoordinator,
    FakeAgent,
    add_nodes,
    coordinator_settings,
    elected_coordinator,
    eventually,
    fleet,
    running_coordinator,
)
from tests.fakekube import FakeKube, running_fake_kube

TAINT = {"key": "gpuwarden.io/unhealthy", "effect": "NoSchedule"}
PENDING_REBOOT = "UnschedulablePendingReboot"
# Long enough to cancel the coordinator inside it, short of the client's 10 s request timeout.
SLOW_PATCH_S = 2.0
# A decision round is a second long: waiting this long shows nothing more is coming.
QUIET_S = 2.0


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


def _node_patches(kube: FakeKube, node: str) -> list[int]:
    """Statuses of the PATCHes of ``node`` itself (0: not answered yet)."""
    return [r.status for r in kube.requests("PATCH", f"/api/v1/nodes/{node}")]


def _marked_events(kube: FakeKube, node: str) -> list[dict[str, Any]]:
    return [
        e for e in kube.events()
        if e["involvedObject"]["name"] == node and e["reason"] == "NodeMarkedForRecovery"
    ]  # fmt: skip


def _pending(state_dir: Path) -> list[AuditRecord]:
    with AuditLog(state_dir / "audit.sqlite3") as audit:
        return audit.pending_actions()


@pytest.mark.broker
@pytest.mark.slow
async def test_a_restart_finishes_the_action_it_cut_off_without_deciding_or_marking_twice(
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
            await eventually(
                lambda: first.api.lifecycle("gpu-1"), lambda s: s == "healthy", what="gpu-1 up"
            )
            kube.delay_next("PATCH", "/api/v1/nodes/gpu-1", SLOW_PATCH_S)
            await agents.fault("gpu-1")
            await eventually(
                lambda: asyncio.to_thread(_node_patches, kube, "gpu-1"),
                lambda statuses: statuses == [0],
                what="the node PATCH in flight",
            )
            await first.cancel()
        cut_off = _pending(state)
        # the abandoned request still lands; let it, so what follows does not race it
        await eventually(
            lambda: asyncio.to_thread(_node_patches, kube, "gpu-1"),
            lambda statuses: statuses != [0],
            what="the abandoned PATCH answered",
        )
        async with running_coordinator(settings()) as second:
            finished = await eventually(
                lambda: second.api.audit("gpu-1"),
                lambda entries: any(e["kind"] == "action_finished" for e in entries),
                what="the cut-off action finished",
            )
            await eventually(
                lambda: asyncio.to_thread(_marked_events, kube, "gpu-1"),
                what="the NodeMarkedForRecovery event",
            )
            await asyncio.sleep(QUIET_S)
            audit = await second.api.audit("gpu-1")
            lifecycle = await second.api.lifecycle("gpu-1")

    assert [(r.kind, r.node, r.action) for r in cut_off] == [
        (AuditKind.ACTION_STARTED, "gpu-1", "mark_unhealthy")
    ]
    closing = [e for e in finished if e["kind"] == "action_finished"]
    assert [(e["started_id"], e["outcome"]) for e in closing] == [(cut_off[0].id, "ok")]
    assert "replayed after restart" in closing[0]["reason"]
    assert [e["action"] for e in audit if e["kind"] == "decision"] == ["pending-reboot"]
    assert [e["kind"] for e in audit if e["kind"].startswith("action_")] == [
        "action_started", "action_finished"
    ]  # fmt: skip
    assert lifecycle == "pending-reboot"
    node = kube.node("gpu-1")
    assert node["metadata"]["labels"][HEALTH_LABEL] == PENDING_REBOOT
    assert node["spec"]["unschedulable"] is True
    assert node["spec"]["taints"] == [TAINT]
    assert CORDONED_BY_ANNOTATION in node["metadata"]["annotations"]
    conditions = [c for c in node["status"]["conditions"] if c["type"] == GPU_CONDITION]
    assert [c["status"] for c in conditions] == ["False"]
    assert len(_marked_events(kube, "gpu-1")) == 1


def _holder(kube: FakeKube) -> str:
    lease = kube.lease(LEASE_NAMESPACE, SHORT_LEASE.name)
    return "" if lease is None else str(lease["spec"].get("holderIdentity") or "")


def _label(kube: FakeKube, node: str) -> str | None:
    labels: dict[str, str] = kube.node(node)["metadata"].get("labels", {})
    return labels.get(HEALTH_LABEL)


async def _until_acting(candidate: ElectedCoordinator, acting: bool = True) -> None:
    async def probe() -> bool:
        return candidate.coordinator.acting

    await eventually(probe, lambda now: now is acting, what=f"{candidate.name} acting={acting}")


@pytest.mark.broker
@pytest.mark.slow
async def test_only_the_leader_acts_and_the_standby_takes_over_when_it_dies(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    names = ("gpu-1", "gpu-2", "gpu-3", "gpu-4")
    add_nodes(kube, *names)

    def settings(identity: str) -> CoordinatorSettings:
        return coordinator_settings(
            tmp_path, broker_url=mosquitto.url, kube=kube, identity=identity,
            flags=["--max-unhealthy", "2", "--http", "off"],
        )  # fmt: skip

    takeover_s = SHORT_LEASE.lease_duration_s + SHORT_LEASE.retry_period_s
    async with (
        fleet(mosquitto.port) as agents,
        elected_coordinator(settings("coord-a"), kube) as leader,
    ):
        await _until_acting(leader)
        async with elected_coordinator(settings("coord-b"), kube) as standby:
            await agents.join(*names)
            await agents.fault("gpu-1")
            await eventually(
                lambda: asyncio.to_thread(_label, kube, "gpu-1"),
                lambda label: label == PENDING_REBOOT,
                what="gpu-1 marked by the leader",
            )
            await asyncio.sleep(QUIET_S)
            standby_writes_while_led = list(standby.actuator.writes)
            standby_acted_while_led = standby.coordinator.acting

            await leader.crash()
            holder_after_crash = _holder(kube)
            await agents.fault("gpu-2")
            await eventually(
                lambda: asyncio.to_thread(_label, kube, "gpu-2"),
                lambda label: label == PENDING_REBOOT,
                within=takeover_s + 10,  # a generous bound, not a speed check
                what="gpu-2 marked by the standby",
            )
            await asyncio.sleep(QUIET_S)

    assert leader.actuator.writes == [
        ActuatorCall("mark_unhealthy", "gpu-1", NodeMark.PENDING_REBOOT)
    ]
    assert (standby_writes_while_led, standby_acted_while_led) == ([], False)
    assert holder_after_crash.startswith("coord-a-")  # died holding it: nothing released
    # the standby checks gpu-1's marks on taking over (they are whole: nothing to write)
    assert sorted(standby.actuator.writes, key=lambda c: c.node) == [
        ActuatorCall("mark_unhealthy", "gpu-1", NodeMark.PENDING_REBOOT),
        ActuatorCall("mark_unhealthy", "gpu-2", NodeMark.PENDING_REBOOT),
    ]
    assert _holder(kube).startswith("coord-b-")
    assert _label(kube, "gpu-1") == PENDING_REBOOT
    assert len(_marked_events(kube, "gpu-1")) == 1


async def test_a_coordinator_cancelled_just_as_an_agent_message_arrives_still_stops(
    tmp_path: Path,
) -> None:
    # No broker: the news is handed to the ingest sink directly, in the same loop step as
    # the cancel (SIGTERM while the fleet talks), which is the moment that must not be lost.
    settings = coordinator_settings(
        tmp_path, broker_url=f"mqtt://127.0.0.1:{free_port()}", kube=None
    )
    with AuditLog(tmp_path / "audit.sqlite3") as audit:
        coordinator = Coordinator(settings, actuator=LocalActuator(), audit=audit)
        task = asyncio.create_task(coordinator.run())

        async def acting() -> bool:
            return coordinator.acting

        await eventually(acting, what="the coordinator acting")
        await asyncio.sleep(0.1)  # every loop parked in its wait for news
        coordinator.on_state(FakeAgent("gpu-1").state())
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=WAIT_S)
        if not done:  # do not leave a runaway coordinator behind
            for other in asyncio.all_tasks() - {asyncio.current_task()}:
                other.cancel()

    assert task in done and task.cancelled()
