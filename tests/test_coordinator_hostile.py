"""On a broker without an ACL (a demo, a first install, a misconfigured broker) forged
messages must not silence the real agent, invented nodes must not count, grow state or pause
remediation, and the coordinator says loudly that the broker lets anyone in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiomqtt
import pytest

from gpuwarden_common.health import Action, Health
from gpuwarden_common.wire import HostState, Kind, StateMessage, StatusMessage, encode, node_topic
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    CLUSTER,
    add_nodes,
    coordinator_settings,
    eventually,
    fleet,
    running_coordinator,
)
from tests.fakekube import FakeKube

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REAL = ("gpu-1", "gpu-2", "gpu-3", "gpu-4")


def _forged_state(node: str, *, boot: str, seq: int, ts: float) -> bytes:
    return encode(StateMessage(
        cluster=CLUSTER, node=node, seq=seq, boot_id=boot, ts=ts, interval_s=10,
        health=Health.HEALTHY, action=Action.NONE, gpus=[], host=HostState(),
    ))  # fmt: skip


async def _forge(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as forger:
        await forger.publish(topic, payload, qos=1, retain=retain)


async def test_a_forged_new_boot_does_not_silence_the_real_agent(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=None,
                                    flags=["--max-unhealthy", "2"])  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join(*REAL)
        await eventually(lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "healthy")
        await _forge(mosquitto.port, node_topic(CLUSTER, "gpu-4", Kind.STATE),
                     _forged_state("gpu-4", boot="forged-boot", seq=0, ts=time.time()))
        await asyncio.sleep(0.5)  # the real agent keeps reporting on its own boot
        await agents.fault("gpu-4")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "pending-reboot",
            what="the real XID 79 acted on",
        )  # fmt: skip
        conflicts = await coordinator.api.metric("gpuwarden_ingest_boot_conflicts_total")
    assert conflicts >= 1


async def test_a_forged_huge_seq_from_the_future_does_not_block_the_real_reports(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=None,
                                    flags=["--max-unhealthy", "2"])  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join(*REAL)
        await eventually(lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "healthy")
        real = agents["gpu-4"]
        await _forge(mosquitto.port, node_topic(CLUSTER, "gpu-4", Kind.STATE),
                     _forged_state("gpu-4", boot=real.boot_id, seq=10**12,
                                   ts=time.time() + 86_400))  # fmt: skip
        await _forge(mosquitto.port, node_topic(CLUSTER, "gpu-4", Kind.STATUS), encode(
            StatusMessage(cluster=CLUSTER, node="gpu-4", seq=10**12, boot_id=real.boot_id,
                          ts=time.time() + 86_400, status="offline")
        ))  # fmt: skip
        await asyncio.sleep(1.5)  # past the offline grace: only genuine reports keep it alive
        after_forgery = await coordinator.api.node("gpu-4")
        await agents.fault("gpu-4")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "pending-reboot",
            what="the real XID 79 acted on",
        )  # fmt: skip
        skewed = await coordinator.api.metric(
            "gpuwarden_ingest_rejected_total", {"reason": "clock_skew"}
        )
    assert (after_forgery["lifecycle"], after_forgery["agent"]) == ("healthy", "online")
    assert skewed == 2


async def _flood(port: int, names: list[str]) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as forger:
        for i, name in enumerate(names):
            msg = StatusMessage(cluster=CLUSTER, node=name, seq=1, boot_id=f"b{i}",
                                ts=time.time(), status="online")  # fmt: skip
            await forger.publish(node_topic(CLUSTER, name, Kind.STATUS), encode(msg), qos=0)


async def test_invented_nodes_count_for_nothing_pause_nothing_and_are_forgotten(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    invented = [f"ghost-{i}" for i in range(3000)]
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=None,
                                    flags=["--max-unhealthy", "2"])  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join(*REAL)
        await eventually(lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "healthy")
        await _flood(mosquitto.port, invented)
        await eventually(
            lambda: coordinator.api.get("/api/v1/nodes"),
            lambda body: len(body["nodes"]) > len(REAL),
            what="the invented nodes heard",
        )
        await asyncio.sleep(1.5)  # past the offline grace: the ghosts are all silent now
        await agents.fault("gpu-4")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "pending-reboot",
            within=10, what="gpu-4's fault acted on despite 3,000 silent ghosts",
        )  # fmt: skip
        cluster = await coordinator.api.get("/api/v1/cluster")
        audit = await coordinator.api.audit()
        left = await eventually(
            lambda: coordinator.api.get("/api/v1/nodes"),
            lambda body: len(body["nodes"]) == len(REAL),
            what="the silent ghosts forgotten",
        )
    assert cluster["nodes_total"] == len(REAL)
    assert not cluster["remediation_paused"]
    assert not [e for e in audit if (e["node"] or "").startswith("ghost-")]
    assert {n["name"] for n in left["nodes"]} == set(REAL)


async def test_on_kubernetes_invented_nodes_cost_no_request_per_name(
    mosquitto: Mosquitto, tmp_path: Path, fake_kube: FakeKube
) -> None:
    add_nodes(fake_kube, *REAL)
    invented = [f"ghost-{i}" for i in range(500)]
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=fake_kube,
                                    flags=["--max-unhealthy", "2"])  # fmt: skip
    async with running_coordinator(settings) as coordinator, fleet(mosquitto.port) as agents:
        await agents.join(*REAL)
        await eventually(lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "healthy")
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as forger:
            for i, name in enumerate(invented):  # full reports this time, with GPUs
                agent_state = _forged_state(name, boot=f"b{i}", seq=1, ts=time.time())
                await forger.publish(node_topic(CLUSTER, name, Kind.STATE), agent_state, qos=0)
        await asyncio.sleep(2.0)  # past the offline grace
        await agents.fault("gpu-4")
        await eventually(
            lambda: coordinator.api.lifecycle("gpu-4"), lambda s: s == "pending-reboot",
            what="gpu-4's fault acted on",
        )
        cluster = await coordinator.api.get("/api/v1/cluster")
    ghost_gets = fake_kube.requests("GET", "/api/v1/nodes/ghost-*")
    lists = fake_kube.requests("GET", "/api/v1/nodes")
    assert ghost_gets == []
    assert len(lists) <= 4  # one read at start, one (debounced) when the ghosts appeared, ...
    assert cluster["nodes_total"] == len(REAL)


async def test_the_coordinator_says_when_its_broker_lets_anyone_in(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = coordinator_settings(tmp_path, broker_url=mosquitto.url, kube=None)
    async with running_coordinator(settings) as coordinator:
        flagged = await eventually(
            lambda: coordinator.api.metric("gpuwarden_broker_anonymous_access"),
            lambda value: value == 1, what="the anonymous broker flagged",
        )  # fmt: skip
    assert flagged == 1


async def test_a_broker_that_refuses_anonymous_clients_is_not_flagged(tmp_path: Path) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker", passwords={"coordinator": "s3cret"}).start()
    try:
        url = f"mqtt://coordinator:s3cret@127.0.0.1:{broker.port}"
        settings = coordinator_settings(tmp_path, broker_url=url, kube=None)
        async with running_coordinator(settings) as coordinator:
            await asyncio.sleep(1.0)  # the probe has run
            text = await coordinator.api.metric("gpuwarden_broker_anonymous_access")
    finally:
        broker.stop()
    assert text == 0
