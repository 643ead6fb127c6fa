from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from agent.publisher import Backoff, Publisher, Stamp
from agent.spool import DirectorySpool, MemorySpool, Spool
from coordinator.ingest import Ingestor
from coordinator.ingest_gate import IngestGate
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.health import Action, Severity
from gpuwarden_common.wire import (
    AckMessage,
    EventKind,
    EventMessage,
    StateMessage,
    StatusMessage,
    encode,
)
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


def _publisher(
    broker: Mosquitto, spool: Spool | None = None, *, ack_timeout_s: float = 10.0
) -> tuple[Publisher, Stamp]:
    stamp = Stamp("c1", "gpu-node-1", "boot-a")
    settings = BrokerSettings.from_url(broker.url)
    return Publisher(
        settings, stamp, spool or MemorySpool(), backoff=FAST, publish_timeout_s=1.0,
        ack_timeout_s=ack_timeout_s,
    ), stamp  # fmt: skip


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


async def test_an_event_stays_spooled_until_the_coordinator_acknowledges_it(
    mosquitto: Mosquitto,
) -> None:
    pub, stamp = _publisher(mosquitto)
    async with (
        listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/events") as heard,
        running(pub),
    ):
        pub.publish_event(_event(stamp, 0))
        await heard.wait_for(lambda m: m)  # the broker has it ...
        await asyncio.sleep(0.3)
        depth_with_no_coordinator = pub.spool_depth()
        async with coordinator(mosquitto) as got:  # ... but only the coordinator's ack counts
            await until(lambda: pub.spool_depth() == 0, "the spool drained by the ack")
    assert depth_with_no_coordinator == 1
    assert [e.message for e in got.events] == ["fault 0"]


async def test_an_unacknowledged_event_is_sent_again_until_it_is(mosquitto: Mosquitto) -> None:
    pub, stamp = _publisher(mosquitto, ack_timeout_s=0.2)
    async with (
        listening(mosquitto.port, "gpuwarden/v1/c1/nodes/+/events") as heard,
        running(pub),
    ):
        pub.publish_event(_event(stamp, 0))
        sent = await heard.wait_for(lambda m: len(m) >= 2)
        async with coordinator(mosquitto):
            await until(lambda: pub.spool_depth() == 0, "the resent event acknowledged")
        await asyncio.sleep(0.5)  # no resend after the ack
        total = len(heard.messages)
        await asyncio.sleep(0.5)
    assert {m.payload for m in sent} == {sent[0].payload}
    assert len(heard.messages) == total


async def test_events_raised_while_no_coordinator_listens_reach_the_next_one(
    mosquitto: Mosquitto,
) -> None:
    pub, stamp = _publisher(mosquitto, ack_timeout_s=0.2)
    async with running(pub):
        async with coordinator(mosquitto) as first:
            pub.publish_event(_event(stamp, 0))
            await until(lambda: pub.spool_depth() == 0, "the first event acknowledged")
        for n in range(1, 6):  # the coordinator restarts: the broker takes these, nobody reads
            pub.publish_event(_event(stamp, n))
        await asyncio.sleep(0.5)
        async with coordinator(mosquitto) as second:
            await until(lambda: pub.spool_depth() == 0, "every event acknowledged")
    assert [e.message for e in first.events] == ["fault 0"]
    assert sorted(e.message for e in second.events) == [f"fault {n}" for n in range(1, 6)]


async def test_a_killed_broker_loses_no_event_and_the_coordinator_takes_each_once(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(workdir=tmp_path / "b").start()  # no persistence: it forgets all
    try:
        pub, stamp = _publisher(
            broker, DirectorySpool(tmp_path / "spool", fsync=False), ack_timeout_s=0.5
        )
        async with running(pub), coordinator(broker) as got:
            for n in range(5):
                pub.publish_event(_event(stamp, n))
            await until(lambda: len(got.events) >= 5, "the first five ingested")
            broker.kill()
            for n in range(5, 15):  # raised while the broker is dead
                pub.publish_event(_event(stamp, n))
                await asyncio.sleep(0.01)
            assert pub.spool_depth() >= 10
            broker.start()
            for n in range(15, 20):
                pub.publish_event(_event(stamp, n))
            await until(lambda: pub.spool_depth() == 0, "every event acknowledged", within=20)
            await asyncio.sleep(0.6)  # a resend, if any were due, would come now
        assert sorted(e.message for e in got.events) == sorted(f"fault {n}" for n in range(20))
    finally:
        broker.stop()


async def test_a_spool_kept_across_an_agent_restart_is_sent_and_drained(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    spool = DirectorySpool(tmp_path / "spool", fsync=False)
    stamp = Stamp("c1", "gpu-node-1", "boot-a")
    spool.append("gpuwarden/v1/c1/nodes/gpu-node-1/events", _event(stamp, 0))  # a past run's
    pub, _ = _publisher(mosquitto, DirectorySpool(tmp_path / "spool", fsync=False))
    async with running(pub), coordinator(mosquitto) as got:
        await until(lambda: pub.spool_depth() == 0, "the old event acknowledged")
    assert [e.message for e in got.events] == ["fault 0"]
    assert list((tmp_path / "spool").glob("*.event")) == []


async def test_an_acknowledgement_for_another_node_removes_nothing(mosquitto: Mosquitto) -> None:
    pub, stamp = _publisher(mosquitto)
    payload = _event(stamp, 0)
    async with running(pub):
        pub.publish_event(payload)
        await asyncio.sleep(0.3)
        ack = AckMessage(cluster="c1", node="gpu-node-2", ts=0.0,
                         event_ids=[msgspec.json.decode(payload)["event_id"]])  # fmt: skip
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            # on the right topic, naming another node: a confused or hostile coordinator
            await client.publish("gpuwarden/v1/c1/nodes/gpu-node-1/ack", encode(ack), qos=1)
        await asyncio.sleep(0.3)
        assert pub.spool_depth() == 1


# --- a coordinator's intake, acknowledging what it ingests -------------------------------------


@dataclass
class Ingested:
    events: list[EventMessage] = field(default_factory=list)

    def on_status(self, msg: StatusMessage) -> None:
        pass

    def on_state(self, msg: StateMessage) -> None:
        pass

    def on_event(self, msg: EventMessage) -> None:
        self.events.append(msg)


@contextlib.asynccontextmanager
async def coordinator(broker: Mosquitto) -> AsyncIterator[Ingested]:
    """The coordinator's real intake (gate, dedupe, acknowledgements) on a clean session, as a
    coordinator runs it."""
    sink = Ingested()
    registry = CollectorRegistry()
    ingestor = Ingestor(BrokerSettings.from_url(broker.url), "c1", sink,
                        IngestGate("c1", registry), reconnect_min_s=0.05, reconnect_max_s=0.2)
    task = asyncio.create_task(ingestor.run())
    try:
        await asyncio.wait_for(ingestor.wait_connected(), 10)
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within:g}s")
        await asyncio.sleep(0.05)
