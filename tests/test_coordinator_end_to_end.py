"""The whole loop: agents report over a real Mosquitto, the coordinator decides, and the fake
Kubernetes API server ends up with DESIGN.md's marks (and, later, without them)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.backends.kubernetes.contract import (
    CORDONED_BY_ANNOTATION,
    GPU_CONDITION,
    HEALTH_LABEL,
)
from tests.agent_process import agent_process
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    CLUSTER,
    WAIT_S,
    RunningCoordinator,
    add_nodes,
    coordinator_settings,
    eventually,
    fleet,
    retained,
    running_coordinator,
)
from tests.fakekube import FakeKube, running_fake_kube

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TAINT = {"key": "gpuwarden.io/unhealthy", "effect": "NoSchedule"}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


def _condition(node: dict[str, Any], kind: str = GPU_CONDITION) -> dict[str, Any] | None:
    return next((c for c in node["status"].get("conditions", []) if c["type"] == kind), None)


def _events_for(kube: FakeKube, node: str, reason: str) -> list[dict[str, Any]]:
    return [
        e for e in kube.events()
        if e["involvedObject"]["name"] == node and e["reason"] == reason
    ]  # fmt: skip


async def _node_when(
    kube: FakeKube, name: str, label: str, *, within: float = WAIT_S
) -> dict[str, Any]:
    """The fake's copy of ``name`` once its health label says ``label``."""
    node: dict[str, Any] = await eventually(
        lambda: asyncio.to_thread(kube.node, name),
        lambda n: n["metadata"].get("labels", {}).get(HEALTH_LABEL) == label,
        within=within,
        what=f"{name} labelled {label}",
    )
    return node


def _untouched(node: dict[str, Any]) -> bool:
    return (
        HEALTH_LABEL not in node["metadata"].get("labels", {})
        and CORDONED_BY_ANNOTATION not in node["metadata"].get("annotations", {})
        and not node["spec"].get("unschedulable")
        and not node["spec"].get("taints")
        and _condition(node) is None
    )


async def test_an_xid_79_from_a_real_agent_marks_only_its_node_for_reboot(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-a", "gpu-b", "gpu-c")
    scenario = tmp_path / "xid79.yaml"
    scenario.write_text("- {at: 2.0, gpu: 1, fault: xid, xid: 79}\n")
    # Real agents publish every second: a 3 s grace keeps them from looking silent, and
    # one node out of three must be allowed.
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube,
        flags=["--max-unhealthy", "1", "--offline-grace", "3"],
    )  # fmt: skip
    sim = ("--sim-gpus", "2")
    async with running_coordinator(settings) as coordinator:
        with (
            agent_process(mosquitto.url, "gpu-a", *sim, "--sim-scenario", str(scenario),
                          tmp=tmp_path),
            agent_process(mosquitto.url, "gpu-b", *sim, tmp=tmp_path),
            agent_process(mosquitto.url, "gpu-c", *sim, tmp=tmp_path),
        ):  # fmt: skip
            await _node_when(kube, "gpu-a", "UnschedulablePendingReboot", within=30)
            await eventually(
                lambda: asyncio.to_thread(_events_for, kube, "gpu-a", "NodeMarkedForRecovery"),
                what="a NodeMarkedForRecovery event for gpu-a",
            )
            audit = await eventually(
                lambda: coordinator.api.audit("gpu-a"),
                lambda entries: any(e["kind"] == "action_finished" for e in entries),
                what="the action on gpu-a audited as finished",
            )
            verdict = await eventually(
                lambda: retained(mosquitto.port, f"gpuwarden/v1/{CLUSTER}/nodes/gpu-a/verdict"),
                lambda v: v is not None and v["lifecycle"] == "pending-reboot",
                what="a retained pending-reboot verdict for gpu-a",
            )
            others = [kube.node("gpu-b"), kube.node("gpu-c")]

    node = kube.node("gpu-a")
    assert node["spec"]["unschedulable"] is True
    assert TAINT in node["spec"]["taints"]
    assert node["metadata"]["annotations"][CORDONED_BY_ANNOTATION] == "gpuwarden"
    condition = _condition(node)
    assert condition is not None and condition["status"] == "False"
    assert all(_untouched(other) for other in others)
    assert kube.requests("PATCH", "/api/v1/nodes/gpu-[bc]*") == []
    assert verdict["schedulable"] is False and verdict["action"] == "reboot"
    decision, started, finished = audit
    assert (decision["kind"], decision["action"], decision["dry_run"]) == (
        "decision", "pending-reboot", False
    )  # fmt: skip
    assert (started["kind"], started["action"]) == ("action_started", "mark_unhealthy")
    assert (finished["kind"], finished["started_id"], finished["outcome"]) == (
        "action_finished", started["id"], "ok"
    )  # fmt: skip


async def _marked_for_reboot(
    coordinator: RunningCoordinator, kube: FakeKube, name: str
) -> dict[str, Any]:
    await eventually(
        lambda: coordinator.api.lifecycle(name),
        lambda state: state == "pending-reboot",
        what=f"{name} pending-reboot",
    )
    node = await _node_when(kube, name, "UnschedulablePendingReboot")
    await eventually(
        lambda: asyncio.to_thread(_events_for, kube, name, "NodeMarkedForRecovery"),
        what=f"a NodeMarkedForRecovery event for {name}",
    )
    return node


async def test_a_node_that_reboots_healthy_goes_through_recovering_back_to_service(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-1")
        await _marked_for_reboot(coordinator, kube, "gpu-1")
        await agents.reboot("gpu-1")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-1"),
            lambda state: state == "healthy",
            what="gpu-1 healthy again",
        )
        await _node_when(kube, "gpu-1", "Schedulable")
        await eventually(
            lambda: asyncio.to_thread(_events_for, kube, "gpu-1", "NodeRecovered"),
            what="a NodeRecovered event for gpu-1",
        )
        # the Event is the recovery's last write: the node is whole now
        node = await asyncio.to_thread(kube.node, "gpu-1")
        audit = await coordinator.api.audit("gpu-1")

    targets = [e["action"] for e in audit if e["kind"] == "decision"]
    assert targets == ["pending-reboot", "recovering", "healthy"]
    assert not node["spec"].get("unschedulable")
    assert TAINT not in (node["spec"].get("taints") or [])
    assert CORDONED_BY_ANNOTATION not in node["metadata"].get("annotations", {})
    condition = _condition(node)
    assert condition is not None and condition["status"] == "True"


async def test_a_node_cordoned_by_someone_else_stays_cordoned_after_recovery(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    kube.modify_node("gpu-1", lambda n: n["spec"].update(unschedulable=True))  # kubectl cordon
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-1")
        marked = await _marked_for_reboot(coordinator, kube, "gpu-1")
        await agents.reboot("gpu-1")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-1"),
            lambda state: state == "healthy",
            what="gpu-1 healthy again",
        )
        node = await _node_when(kube, "gpu-1", "Schedulable")

    assert CORDONED_BY_ANNOTATION not in marked["metadata"].get("annotations", {})
    assert node["spec"]["unschedulable"] is True  # still the other cordon
    assert TAINT not in (node["spec"].get("taints") or [])  # but ours is gone
