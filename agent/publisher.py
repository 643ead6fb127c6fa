"""The agent's MQTT side: retained status with a last will, retained state, fault events.

One connection loop owns the client. Events go through the :mod:`agent.spool` first and are
sent in order, each acknowledged (QoS 1) before the next; the state is a single "latest" slot,
since only the newest snapshot matters.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict

import aiomqtt
import structlog

from agent.spool import Spool
from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.wire import Kind, StatusMessage, encode, node_topic

log = structlog.get_logger("agent.publisher")


class Envelope(TypedDict):
    cluster: str
    node: str
    boot_id: str
    seq: int
    ts: float


@dataclass
class Stamp:
    """Fills the envelope fields every message carries; ``seq`` is monotonic per boot."""

    cluster: str
    node: str
    boot_id: str

    def __post_init__(self) -> None:
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> Envelope:
        with self._lock:
            seq = next(self._counter)
        return {
            "cluster": self.cluster,
            "node": self.node,
            "boot_id": self.boot_id,
            "seq": seq,
            "ts": time.time(),
        }


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 0.5
    max_s: float = 30.0

    def delays(self) -> Iterator[float]:
        for attempt in itertools.count():
            yield backoff_delay(attempt, self.initial_s, self.max_s)


PublishHook = Callable[[Kind], None]


class Publisher:
    def __init__(
        self,
        broker: BrokerSettings,
        stamp: Stamp,
        spool: Spool,
        *,
        keepalive_s: int = 15,
        publish_timeout_s: float = 5.0,
        backoff: Backoff = Backoff(),
        on_published: PublishHook | None = None,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        self._broker = broker
        self._stamp = stamp
        self._spool = spool
        self._keepalive = keepalive_s
        # A broker that died mid-publish is noticed by this timeout, not by the socket: paho
        # keeps the message queued and aiomqtt waits for a PUBACK that will never come.
        self._publish_timeout = publish_timeout_s
        self._backoff = backoff
        self._on_published = on_published or (lambda _k: None)
        self._on_connection = on_connection or (lambda _c: None)
        self._latest_state: bytes | None = None
        self._state_dirty = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connected = False
        self._topic = {k: node_topic(stamp.cluster, stamp.node, k) for k in Kind}

    # --- called by the daemon -------------------------------------------------------------
    def publish_state(self, payload: bytes) -> None:
        self._latest_state = payload
        self._state_dirty = True
        self._wake.set()

    def publish_event(self, payload: bytes) -> None:
        self._spool.append(self._topic[Kind.EVENTS], payload)
        self._drained.clear()
        self._wake.set()

    def spool_depth(self) -> int:
        return len(self._spool)

    def spool_dropped(self) -> int:
        return self._spool.dropped

    # --- the connection loop --------------------------------------------------------------
    def _status(self, status: str) -> bytes:
        return encode(StatusMessage(**self._stamp.next(), status=status))  # type: ignore[arg-type]

    async def run(self) -> None:
        delays = self._backoff.delays()
        outage_logged = False
        while True:
            online = self._status("online")
            # reserved after "online" so the will always reads as newer than this session's
            # online message, and older than the next session's
            will = aiomqtt.Will(
                self._topic[Kind.STATUS], self._status("offline"), qos=1, retain=True
            )
            try:
                async with aiomqtt.Client(
                    **self._broker.client_kwargs(),
                    identifier=f"gpuwarden-agent-{self._stamp.node}",
                    will=will,
                    keepalive=self._keepalive,
                    timeout=self._publish_timeout,
                ) as client:
                    self._client = client
                    self._set_connected(True)
                    log.info("broker connected", broker=self._broker.display)
                    outage_logged = False
                    delays = self._backoff.delays()
                    await client.publish(self._topic[Kind.STATUS], online, qos=1, retain=True)
                    self._state_dirty = self._latest_state is not None
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._set_connected(False)
                if not outage_logged:
                    log.warning(
                        "broker unreachable; events spool until it is back",
                        broker=self._broker.display,
                        error=str(exc),
                        spooled=len(self._spool),
                    )
                    outage_logged = True
                await asyncio.sleep(next(delays))
            finally:
                self._client = None

    async def _serve(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            await self._drain_events(client)
            if self._state_dirty and self._latest_state is not None:
                self._state_dirty = False
                await client.publish(
                    self._topic[Kind.STATE], self._latest_state, qos=1, retain=True
                )
                self._on_published(Kind.STATE)
            if len(self._spool) == 0 and not self._state_dirty:
                await self._wake.wait()

    async def _drain_events(self, client: aiomqtt.Client) -> None:
        while (item := self._spool.peek()) is not None:
            await client.publish(item.topic, item.payload, qos=1, retain=False)
            self._spool.ack(item.key)
            self._on_published(Kind.EVENTS)
        self._drained.set()

    async def wait_drained(self) -> None:
        """Until every spooled event has been acknowledged (bound it with a timeout)."""
        await self._drained.wait()

    async def say_offline(self) -> None:
        """Graceful shutdown: tell the fleet now rather than waiting for the will."""
        client = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(
                client.publish(
                    self._topic[Kind.STATUS], self._status("offline"), qos=1, retain=True
                ),
                timeout=2,
            )
        except (aiomqtt.MqttError, TimeoutError):
            log.warning("could not publish offline status on shutdown")

    def _set_connected(self, value: bool) -> None:
        if self.connected != value:
            self.connected = value
            self._on_connection(value)
