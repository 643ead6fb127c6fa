"""The agent's MQTT side: retained status with a last will, retained state, fault events.

One connection loop owns the client. Events go through the :mod:`agent.spool` first, are sent
in order (QoS 1), and stay spooled until the coordinator acknowledges them on the node's
``ack`` topic: an event the broker took but nobody received (the coordinator down, the
broker restarted without persistence) is sent again after ``ack_timeout_s``, then at growing
intervals, and on every reconnect. The state is a single "latest" slot, since only the
newest snapshot matters.
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
from gpuwarden_common.aio import raise_if_cancelled, run_together, wait_event
from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.wire import (
    Kind,
    StatusMessage,
    WireError,
    decode_ack,
    encode,
    event_id_of,
    node_topic,
)

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
        ack_timeout_s: float = 10.0,
        ack_timeout_max_s: float = 120.0,
        on_published: PublishHook | None = None,
        on_acked: Callable[[int], None] | None = None,
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
        self._ack_timeout_s = ack_timeout_s
        self._ack_timeout_max_s = ack_timeout_max_s
        self._on_published = on_published or (lambda _k: None)
        self._on_acked = on_acked or (lambda _n: None)
        self._on_connection = on_connection or (lambda _c: None)
        self._latest_state: bytes | None = None
        self._state_dirty = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.connected = False
        self._topic = {k: node_topic(stamp.cluster, stamp.node, k) for k in Kind}
        # events sent on this connection and not yet acknowledged: when, and how often
        self._sent_at: dict[int, float] = {}
        self._sends: dict[int, int] = {}
        self._key_of: dict[str, int] = {}  # event_id -> spool key
        for key in spool.pending():  # a spool kept across an agent restart
            item = spool.get(key)
            event_id = None if item is None else event_id_of(item.payload)
            if event_id is not None:
                self._key_of[event_id] = key
        if len(spool) == 0:
            self._drained.set()

    # --- called by the daemon -------------------------------------------------------------
    def publish_state(self, payload: bytes) -> None:
        self._latest_state = payload
        self._state_dirty = True
        self._wake.set()

    def publish_event(self, payload: bytes) -> None:
        key = self._spool.append(self._topic[Kind.EVENTS], payload)
        event_id = event_id_of(payload)
        if event_id is not None:
            self._key_of[event_id] = key
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
            raise_if_cancelled()
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
                    await client.subscribe(self._topic[Kind.ACK], qos=1)
                    self._state_dirty = self._latest_state is not None
                    # whatever this connection sends, it sends again: the last one's may be lost
                    self._sent_at.clear()
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
        await run_together(self._receive_acks(client), self._send(client))

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            raise_if_cancelled()
            self._wake.clear()
            next_due = await self._send_due_events(client)
            if self._state_dirty and self._latest_state is not None:
                self._state_dirty = False
                await client.publish(
                    self._topic[Kind.STATE], self._latest_state, qos=1, retain=True
                )
                self._on_published(Kind.STATE)
            if self._state_dirty:
                continue
            timeout = None if next_due is None else max(0.0, next_due - time.monotonic())
            await wait_event(self._wake, timeout)

    async def _send_due_events(self, client: aiomqtt.Client) -> float | None:
        """Send, in order, every event not sent on this connection yet or unacknowledged
        past its timeout; returns when the next one falls due (None: none waiting)."""
        next_due: float | None = None
        for key in self._spool.pending():
            sent_at = self._sent_at.get(key)
            if sent_at is not None:
                due = sent_at + self._resend_after(self._sends.get(key, 1))
                if due > time.monotonic():
                    next_due = due if next_due is None else min(next_due, due)
                    continue
            item = self._spool.get(key)
            if item is None:
                continue
            await client.publish(item.topic, item.payload, qos=1, retain=False)
            self._sent_at[key] = time.monotonic()
            self._sends[key] = self._sends.get(key, 0) + 1
            self._on_published(Kind.EVENTS)
            due = self._sent_at[key] + self._resend_after(self._sends[key])
            next_due = due if next_due is None else min(next_due, due)
        return next_due

    def _resend_after(self, sends: int) -> float:
        return min(self._ack_timeout_max_s, self._ack_timeout_s * 2.0 ** min(sends - 1, 10))

    async def _receive_acks(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value != self._topic[Kind.ACK]:
                continue
            payload = message.payload
            try:
                ack = decode_ack(payload if isinstance(payload, bytes | bytearray | str) else b"")
            except WireError as err:
                log.warning("acknowledgement dropped", reason=err.reason, detail=err.detail)
                continue
            if (ack.cluster, ack.node) != (self._stamp.cluster, self._stamp.node):
                continue
            self._acknowledged(ack.event_ids)

    def _acknowledged(self, event_ids: list[str]) -> None:
        done = 0
        for event_id in event_ids:
            key = self._key_of.pop(event_id, None)
            if key is None:
                continue  # acked twice, or dropped from a full spool meanwhile
            self._spool.ack(key)
            self._sent_at.pop(key, None)
            self._sends.pop(key, None)
            done += 1
        if done:
            self._on_acked(done)
        if len(self._spool) == 0:
            self._drained.set()
        if len(self._key_of) > len(self._spool) + 1024:  # dropped from a full spool
            live = set(self._spool.pending())
            self._key_of = {e: k for e, k in self._key_of.items() if k in live}
        self._wake.set()

    @property
    def drained(self) -> asyncio.Event:
        """Set while the coordinator has acknowledged every spooled event."""
        return self._drained

    async def wait_drained(self) -> None:
        """Until the coordinator has acknowledged every spooled event (bound it with a
        timeout)."""
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
