"""The health feed other tools read is never stale or forged for long: verdicts come back
after a broker restart without persistence, a forged retained verdict is replaced, one for a
node the coordinator does not know is deleted, and everything is republished periodically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from coordinator.settings import CoordinatorSettings
from tests.brokers import Mosquitto
from tests.coordinator_harness import (
    CLUSTER,
    coordinator_settings,
    eventually,
    fleet,
    retained,
    running_coordinator,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

NODES = tuple(f"gpu-{i}" for i in range(1, 9))
# long enough that nothing changes on its own while a test watches
QUIET_FLAGS = ["--offline-grace", "120", "--kube", "off"]


def _verdict_topic(node: str) -> str:
    return f"gpuwarden/v1/{CLUSTER}/nodes/{node}/verdict"


async def _verdicts(port: int) -> dict[str, Any]:
    found = {}
    for node in NODES:
        body = await retained(port, _verdict_topic(node), wait_s=0.3)
        if body is not None:
            found[node] = body
    return found


def _settings(tmp_path: Path, broker: Mosquitto, *flags: str) -> CoordinatorSettings:
    return coordinator_settings(tmp_path, broker_url=broker.url, kube=None,
                                flags=[*QUIET_FLAGS, *flags])  # fmt: skip


async def test_every_verdict_is_back_soon_after_a_broker_restart_without_persistence(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path / "broker").start()
    try:
        async with running_coordinator(_settings(tmp_path, broker)):
            async with fleet(broker.port) as agents:
                await agents.join(*NODES)
                await eventually(lambda: _verdicts(broker.port), lambda v: len(v) == len(NODES),
                                 what="every verdict published")  # fmt: skip
                agents.stopping = True
            broker.kill()
            broker.start()
            back = await eventually(
                lambda: _verdicts(broker.port), lambda v: len(v) == len(NODES),
                what="every verdict republished after the restart",
            )  # fmt: skip
    finally:
        broker.stop()
    assert {v["lifecycle"] for v in back.values()} == {"healthy"}


async def test_a_forged_retained_verdict_is_replaced_at_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_coordinator(_settings(tmp_path, mosquitto, "--max-unhealthy", "2")),
        fleet(mosquitto.port) as agents,
    ):
        await agents.join(*NODES)
        await agents.fault("gpu-1")
        await eventually(
            lambda: retained(mosquitto.port, _verdict_topic("gpu-1")),
            lambda v: v is not None and v["lifecycle"] == "pending-reboot",
            what="gpu-1's verdict",
        )
        forged = {"schema": "gpuwarden/v1", "type": "verdict", "cluster": CLUSTER,
                  "node": "gpu-1", "ts": 0, "lifecycle": "healthy", "health": "healthy",
                  "action": "none", "schedulable": True}  # fmt: skip
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as forger:
            await forger.publish(_verdict_topic("gpu-1"), _json(forged), qos=1, retain=True)
        restored = await eventually(
            lambda: retained(mosquitto.port, _verdict_topic("gpu-1")),
            lambda v: v is not None and v["lifecycle"] == "pending-reboot",
            within=3.0,  # well before the periodic refresh (60 s here)
            what="the forged verdict replaced",
        )
    assert restored["schedulable"] is False


async def test_a_verdict_for_a_node_the_coordinator_never_judged_is_deleted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    topic = _verdict_topic("gpu-404")
    async with running_coordinator(_settings(tmp_path, mosquitto)):
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as forger:
            await forger.publish(topic, b'{"lifecycle": "healthy"}', qos=1, retain=True)
        await eventually(lambda: retained(mosquitto.port, topic), lambda v: v is None,
                         what="the invented verdict deleted")  # fmt: skip


async def test_verdicts_are_republished_every_feed_refresh(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with (
        running_coordinator(_settings(tmp_path, mosquitto, "--feed-refresh", "1")),
        fleet(mosquitto.port) as agents,
    ):
        await agents.join("gpu-1")
        first = await eventually(lambda: retained(mosquitto.port, _verdict_topic("gpu-1")),
                                 what="gpu-1's verdict")  # fmt: skip
        later = await eventually(
            lambda: retained(mosquitto.port, _verdict_topic("gpu-1")),
            lambda v: v is not None and v["ts"] > first["ts"] + 0.5,
            what="the verdict republished with nothing changed",
        )
    assert later["lifecycle"] == first["lifecycle"] == "healthy"


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
