"""DESIGN.md's safety rules, end to end: what the coordinator refuses to do to real machines.

A running coordinator (real Mosquitto, fake API server, Kubernetes actuator) is fed hostile
input, mass silence, more faults than ``--max-unhealthy`` allows, and ``--dry-run``; the fake
API server's request log shows what reached the cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuwarden_common.health import Action, Health
from gpuwarden_common.wire import MAX_PAYLOAD_BYTES, Kind, encode, node_topic
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    CLUSTER,
    AlertReceiver,
    FakeAgent,
    RunningCoordinator,
    add_nodes,
    alert_receiver,
    coordinator_settings,
    eventually,
    fleet,
    running_coordinator,
)
from tests.fakekube import FakeKube, running_fake_kube

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REJECTED = "gpuwarden_ingest_rejected_total"
# A decision round is a second long: waiting this long after a refusal shows it sticks.
QUIET_S = 2.5


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with running_fake_kube() as server:
        yield server


def _node_writes(kube: FakeKube) -> list[str]:
    """Writes that reached nodes or events (leader election's Lease writes aside)."""
    return [
        f"{r.method} {r.path}" for r in kube.writes()
        if not r.path.startswith("/apis/coordination.k8s.io/")
    ]  # fmt: skip


async def _all_healthy(coordinator: RunningCoordinator, names: tuple[str, ...]) -> None:
    async def lifecycles() -> dict[str, str | None]:
        return {name: await coordinator.api.lifecycle(name) for name in names}

    await eventually(
        lifecycles,
        lambda seen: all(state == "healthy" for state in seen.values()),
        what="every node healthy",
    )


def _topic(node: str, kind: Kind) -> str:
    return node_topic(CLUSTER, node, kind)


def _faulty_state(node: str, *, cluster: str = CLUSTER) -> bytes:
    """A valid-looking state report of a node with an XID 79 (a spoofer's favourite)."""
    agent = FakeAgent(node)
    agent.faulty_gpu = 0
    agent.health, agent.action = Health.UNHEALTHY, Action.REBOOT
    body = json.loads(encode(agent.state()))
    body["cluster"] = cluster
    return json.dumps(body).encode()


async def test_hostile_messages_are_counted_by_reason_and_never_reach_the_cluster(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    names = ("gpu-1", "gpu-2")
    add_nodes(kube, *names)
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    good_state = json.loads(_faulty_state("gpu-1"))
    hostile = {
        "bad_json": (_topic("gpu-1", Kind.STATE), b'{"schema": "gpuwarden/v1", "node": '),
        "invalid": (_topic("gpu-1", Kind.STATE),
                    json.dumps({**good_state, "gpus": "all of them"}).encode()),
        "unknown_schema": (_topic("gpu-1", Kind.STATE),
                           json.dumps({**good_state, "schema": "gpuwarden/v9"}).encode()),
        "node_mismatch": (_topic("gpu-1", Kind.STATE), _faulty_state("gpu-2")),
        "oversized": (_topic("gpu-1", Kind.STATE), b" " * (MAX_PAYLOAD_BYTES + 1)),
        "wrong_cluster": (_topic("gpu-1", Kind.STATE), _faulty_state("gpu-1", cluster="c2")),
    }  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join(*names)
        await _all_healthy(coordinator, names)
        for topic, payload in hostile.values():
            await agents.publish_raw(topic, payload)

        async def counts() -> dict[str, float]:
            return {r: await coordinator.api.metric(REJECTED, {"reason": r}) for r in hostile}

        counted = await eventually(
            counts, lambda c: all(v >= 1 for v in c.values()), what="every rejection counted"
        )
        await asyncio.sleep(QUIET_S)
        lifecycles = [await coordinator.api.lifecycle(name) for name in names]
        health = await coordinator.api.get("/healthz")

    assert counted == dict.fromkeys(hostile, 1.0)
    assert lifecycles == ["healthy", "healthy"]
    assert kube.requests("PATCH") == []
    assert health["status"] == "ok"


async def test_a_flood_of_2000_bad_messages_is_counted_and_the_coordinator_keeps_serving(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2", "gpu-3")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube, flags=["--max-unhealthy", "1"]
    )
    spoof = (_topic("gpu-1", Kind.STATE), _faulty_state("gpu-2"))
    garbage = (_topic("gpu-2", Kind.EVENTS), b"\x00\xff not json")
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await _all_healthy(coordinator, ("gpu-1", "gpu-2"))
        for i in range(2000):
            await agents.publish_raw(*(spoof if i % 2 else garbage))
        rejected = await eventually(
            lambda: coordinator.api.metric(REJECTED),
            lambda total: total >= 2000,
            what="2000 rejections counted",
        )
        health = await coordinator.api.get("/healthz")
        await agents.join("gpu-3")  # and an honest newcomer is still heard
        await _all_healthy(coordinator, ("gpu-1", "gpu-2", "gpu-3"))
        by_reason = {
            r: await coordinator.api.metric(REJECTED, {"reason": r})
            for r in ("node_mismatch", "bad_json")
        }

    assert rejected == 2000
    assert by_reason == {"node_mismatch": 1000, "bad_json": 1000}
    assert health["status"] == "ok" and health["broker_connected"] is True
    assert kube.requests("PATCH") == []


async def test_three_of_ten_agents_going_silent_pauses_remediation_with_one_alert_and_no_cordon(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    names = tuple(f"gpu-{i:02d}" for i in range(10))
    silent = names[:3]
    add_nodes(kube, *names)
    async with alert_receiver() as receiver:
        settings = coordinator_settings(
            tmp_path, broker_url=mosquitto.url, kube=kube,
            flags=["--alert-webhook", receiver.url],  # --max-unhealthy stays 10%: one node
        )  # fmt: skip
        async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
            await agents.join(*names)
            await _all_healthy(coordinator, names)
            # the network between them and us broke, say: first the agents' wills arrive,
            # then the kubelets' heartbeats are missed too
            await asyncio.gather(*(agents.go_silent(name) for name in silent))
            for name in silent:
                await asyncio.to_thread(kube.modify_node, name, _not_ready)
            await eventually(
                lambda: coordinator.api.metric("gpuwarden_remediation_paused"),
                lambda value: value == 1,
                what="remediation paused",
            )
            await eventually(lambda: _alerts(receiver), what="the pause alert delivered")
            await asyncio.sleep(QUIET_S)
            lifecycles = {name: await coordinator.api.lifecycle(name) for name in silent}
            paused = await coordinator.api.metric("gpuwarden_remediation_paused")
            cluster = await coordinator.api.get("/api/v1/cluster")

    assert _node_writes(kube) == []
    assert lifecycles == dict.fromkeys(silent, "suspect")
    assert paused == 1
    # the test broker is anonymous, which the coordinator rightly reports too
    about_nodes = [a for a in receiver.alerts if a not in receiver.keyed("broker-anonymous")]
    assert len(about_nodes) == 1
    assert receiver.keyed("remediation-paused") == about_nodes
    assert "mass-silence" in about_nodes[0]["text"]
    assert cluster["remediation_paused"] is True
    assert "3 of 10 agents are silent" in cluster["paused_reason"]


def _not_ready(node: dict[str, object]) -> None:
    status = node["status"]
    assert isinstance(status, dict)
    status["conditions"] = [{"type": "Ready", "status": "False", "reason": "NodeStatusUnknown"}]


async def _alerts(receiver: AlertReceiver) -> list[dict[str, Any]]:
    return list(receiver.alerts)


async def test_a_second_fault_past_max_unhealthy_is_held_back_with_one_alert(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    names = ("gpu-1", "gpu-2", "gpu-3", "gpu-4")
    add_nodes(kube, *names)
    async with alert_receiver() as receiver:
        settings = coordinator_settings(
            tmp_path, broker_url=mosquitto.url, kube=kube,
            flags=["--max-unhealthy", "1", "--alert-webhook", receiver.url],
        )  # fmt: skip
        async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
            await agents.join(*names)
            await _all_healthy(coordinator, names)
            await agents.fault("gpu-1")
            await eventually(
                lambda: coordinator.api.lifecycle("gpu-1"),
                lambda state: state == "pending-reboot",
                what="gpu-1 marked",
            )
            await agents.fault("gpu-2")
            await eventually(
                lambda: coordinator.api.metric("gpuwarden_remediation_paused"),
                lambda value: value == 1,
                what="remediation paused",
            )
            await eventually(
                lambda: _alerts(receiver),
                lambda alerts: len(receiver.keyed("remediation-paused")) == 1,
                what="the pause alert delivered",
            )
            await asyncio.sleep(QUIET_S)
            held_back = await coordinator.api.lifecycle("gpu-2")
            denied = await coordinator.api.metric(
                "gpuwarden_remediations_denied_total", {"reason": "max-unhealthy"}
            )

    assert held_back == "healthy"
    assert [w for w in _node_writes(kube) if "gpu-2" in w] == []
    assert kube.node("gpu-1")["spec"]["unschedulable"] is True
    pause_alerts = receiver.keyed("remediation-paused")
    assert len(pause_alerts) == 1
    assert "gpu-2" in pause_alerts[0]["attachments"][0]["text"]
    assert denied >= 2  # refused again every round, alerted once


async def test_dry_run_decides_and_audits_a_fault_but_writes_nothing_to_the_cluster(
    mosquitto: Mosquitto, kube: FakeKube, tmp_path: Path
) -> None:
    add_nodes(kube, "gpu-1", "gpu-2")
    settings = coordinator_settings(
        tmp_path, broker_url=mosquitto.url, kube=kube,
        flags=["--dry-run", "--max-unhealthy", "1"],
    )  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join("gpu-1", "gpu-2")
        await agents.fault("gpu-1")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-1"),
            lambda state: state == "pending-reboot",
            what="gpu-1 decided pending-reboot",
        )
        await asyncio.sleep(QUIET_S)
        audit = await coordinator.api.audit("gpu-1")
        health = await coordinator.api.get("/healthz")

    decisions = [e for e in audit if e["kind"] == "decision"]
    assert [(d["action"], d["dry_run"]) for d in decisions] == [("pending-reboot", True)]
    assert [e for e in audit if e["kind"].startswith("action_")] == []
    assert health["dry_run"] is True
    assert _node_writes(kube) == []
