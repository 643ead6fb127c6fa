from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.publisher import Backoff, Publisher, Stamp
from agent.spool import DirectorySpool, MemorySpool, Spool
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import EventKind, EventMessage, encode
from tests.brokers import Mosquitto
from tests.mqtt_helpers import listening

pytestmark = pytest.mark.broker

FAST = Backoff(initial_s=0.05, max_s=0.2)


def _event(stamp: Stamp, n: int) -> bytes:
    return encode(
        EventMessage(
            **stamp.next(),
            kind=EventKind.XID,
            code="XID-79",
            xid=79,
            severity=Severity.CRITICAL,
            action=Action.REBOOT,
            message=f"fault {n}",
        )
    )


@contextlib.asynccontextmanager
async def running(pub: Publisher) -> AsyncIterator[Publisher]:
    task = asyncio.create_task(pub.run())
    try:
        yield pub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _publisher(broker: Mosquitto, spool: Spool | None = None) -> tuple[Publisher, Stamp]:
    stamp = Stamp("c1", "gpu-node-1", "boot-a")
    settings = BrokerSettings.from_url(broker.url)
    return Publisher(
        settings, stamp, spool or MemorySpool(), backoff=FAST, publish_timeout_s=1.0
    ), stamp


async def test_connecting_publishes_a_retained_online_status(mosquitto: Mosquitto) -> None:
    pub, _ = _publisher(mosquitto)
    topic = "gpuwarden/v1/c1/nodes/+/status"
    async with running(pub):
        async with listening(mosquitto.port, topic) as live:
            await live.wait_for(lambda m: m)
        async with listening(mosquitto.port, topic) as late:  # a coordinator starting later
            msgs = await late.wait_for(lambda m: m)
    assert msgs[0].retain
    assert msgs[0].json()["status"] == "online"


async def test_state_is_published_retained_and_only_the_latest_matters(
    mosquitto: Mosquitto,
) -> None:
    pub, _ = _publisher(mosquitto)
    pub.publish_state(b'{"v": 1}')
    pub.publish_state(b'{"v": 2}')
    async with running(pub):
        await asyncio.sleep(0.3)
    async with listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/state") as heard:
        msgs = await heard.wait_for(lambda m: m)
    assert msgs[0].retain and msgs[0].payload == b'{"v": 2}'


async def test_events_arrive_in_the_order_they_were_raised(mosquitto: Mosquitto) -> None:
    pub, stamp = _publisher(mosquitto)
    async with (
        listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/events") as heard,
        running(pub),
    ):
        for n in range(20):
            pub.publish_event(_event(stamp, n))
        msgs = await heard.wait_for(lambda m: len(m) >= 20)
    assert [m.json()["message"] for m in msgs] == [f"fault {n}" for n in range(20)]


async def test_a_killed_broker_loses_no_event_and_duplicates_none(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path / "b", persistence=True).start()
    try:
        pub, stamp = _publisher(broker, DirectorySpool(tmp_path / "spool", fsync=False))
        async with (
            listening(
                broker.port, "gpuwarden/v1/c1/nodes/+/events", identifier="audit", persistent=True
            ) as heard,
            running(pub),
        ):
            for n in range(5):
                pub.publish_event(_event(stamp, n))
            await heard.wait_for(lambda m: len(m) >= 5)
            broker.kill()
            for n in range(5, 15):  # raised while the broker is dead
                pub.publish_event(_event(stamp, n))
                await asyncio.sleep(0.01)
            assert pub.spool_depth() > 0
            broker.start()
            for n in range(15, 20):
                pub.publish_event(_event(stamp, n))
            msgs = await heard.wait_for(lambda m: len(m) >= 20, timeout=20)
            await asyncio.sleep(0.3)  # a duplicate would arrive now
            msgs = heard.messages
        assert [m.json()["message"] for m in msgs] == [f"fault {n}" for n in range(20)]
        assert pub.spool_depth() == 0
    finally:
        broker.stop()
