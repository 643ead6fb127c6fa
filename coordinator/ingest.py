"""The coordinator's MQTT intake: one aiomqtt connection, reconnected forever, that feeds the
:class:`~coordinator.ingest_gate.IngestGate` and hands what it accepts to an
:class:`IngestSink` (the capacity model), and acknowledges every fault event it took, so the
agents keep each one until the coordinator, not just the broker, has it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiomqtt
import structlog

from coordinator.ingest_gate import INTERNAL_ERROR, BootConflict, IngestGate, Refusal, kind_of
from coordinator.ingest_rates import LogLimiter, RateMeter
from gpuwarden_common.aio import raise_if_cancelled, run_together
from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.wire import (
    AckMessage,
    EventMessage,
    Kind,
    StateDigest,
    StatusMessage,
    WireError,
    agent_subscriptions,
    cluster_health_topic,
    encode,
    node_topic,
)

log = structlog.get_logger("coordinator.ingest")

# the most event ids one acknowledgement carries (the wire's bound)
ACK_BATCH = 4096


# --- the I/O half ---------------------------------------------------------------------------


class IngestSink(Protocol):
    """Where accepted messages go. Plain calls on the event loop: keep them quick, they are
    timed (``gpuwarden_ingest_sink_seconds``) and a slow one is logged."""

    def on_status(self, msg: StatusMessage) -> None: ...

    def on_state(self, msg: StateDigest) -> None: ...

    def on_event(self, msg: EventMessage) -> None: ...


@dataclass(frozen=True)
class IngestStats:
    connected: bool
    connects: int
    outages: int
    received: int
    accepted: int
    rejected: int
    internal_errors: int
    received_per_s: float
    accepted_per_s: float
    sink_calls: int
    sink_seconds_total: float
    sink_seconds_max: float
    last_message_at: float | None


class Ingestor:
    """Subscribes to every agent topic of ``cluster`` and feeds ``sink`` through ``gate``.

    ``run()`` never returns on its own: it reconnects with jittered backoff after every
    broker failure and is stopped by cancelling its task. A message that makes the gate or
    the sink raise is counted as ``internal_error`` and logged; the loop carries on.

    While ``should_ack()`` holds (this replica leads), every fault event the sink took, and
    every resend of one it already had, is acknowledged on the node's ``ack`` topic, batched
    per node: the agent keeps an event until then, so delivery is end to end.
    """

    def __init__(
        self,
        broker: BrokerSettings,
        cluster: str,
        sink: IngestSink,
        gate: IngestGate,
        *,
        client_id: str | None = None,
        persistent_session: bool = False,
        keepalive_s: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        log_per_reason_per_minute: int = 5,
        slow_sink_s: float = 0.05,
        should_ack: Callable[[], bool] = lambda: True,
        on_connected: Callable[[], None] = lambda: None,
        on_conflict: Callable[[BootConflict], None] = lambda _c: None,
        on_feed: Callable[[str, bytes], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if gate.cluster != cluster:
            raise ValueError(f"gate is for cluster {gate.cluster!r}, ingestor for {cluster!r}")
        if persistent_session and client_id is None:
            raise ValueError("a persistent session needs a fixed client_id")
        self._broker = broker
        # built now so a bad TLS file fails at startup, not as an endless "outage"
        self._client_kwargs = broker.client_kwargs()
        self._cluster = cluster
        self._sink = sink
        self._gate = gate
        self._metrics = gate.metrics
        self._client_id = client_id
        self._persistent = persistent_session
        self._keepalive_s = keepalive_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._slow_sink_s = slow_sink_s
        self._should_ack = should_ack
        self._on_connected_hook = on_connected
        self._on_conflict = on_conflict
        # the coordinator's own feed, heard back: retained verdicts and the cluster summary
        self._on_feed = on_feed
        self._feed_topics = (
            [] if on_feed is None
            else [node_topic(cluster, "+", Kind.VERDICT), cluster_health_topic(cluster)]
        )  # fmt: skip
        self._acks_due: dict[str, list[str]] = {}
        self._ack_wake = asyncio.Event()
        self._clock = clock
        self._delivery = _delivery_to(self._deliver)
        self._log_limiter = LogLimiter(log_per_reason_per_minute)
        self._received_rate = RateMeter()
        self._accepted_rate = RateMeter()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._pending_retained: dict[str, bytes] = {}
        self._connects = 0
        self._outages = 0
        self._received = 0
        self._accepted = 0
        self._rejected = 0
        self._internal_errors = 0
        self._sink_calls = 0
        self._sink_seconds_total = 0.0
        self._sink_seconds_max = 0.0
        self._last_message_at: float | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Until connected and subscribed; bound it with ``asyncio.timeout``."""
        await self._connected.wait()

    def stats(self) -> IngestStats:
        now = self._clock()
        return IngestStats(
            connected=self.connected,
            connects=self._connects,
            outages=self._outages,
            received=self._received,
            accepted=self._accepted,
            rejected=self._rejected,
            internal_errors=self._internal_errors,
            received_per_s=self._received_rate.rate(now),
            accepted_per_s=self._accepted_rate.rate(now),
            sink_calls=self._sink_calls,
            sink_seconds_total=self._sink_seconds_total,
            sink_seconds_max=self._sink_seconds_max,
            last_message_at=self._last_message_at,
        )

    async def publish_retained(self, topic: str, payload: bytes) -> bool:
        """Publish a retained QoS 1 message (verdict, cluster health) on this connection.

        True when the broker took it. While disconnected the newest payload per topic is
        kept and published on reconnect, since a retained feed only needs its latest value.
        """
        client = self._client
        if client is None or not self.connected:
            self._pending_retained[topic] = payload
            return False
        try:
            await client.publish(topic, payload, qos=1, retain=True)
        except aiomqtt.MqttError:
            self._pending_retained[topic] = payload
            return False
        return True

    async def run(self) -> None:
        attempt = 0
        down_since: float | None = None
        while True:
            raise_if_cancelled()
            try:
                async with aiomqtt.Client(
                    **self._client_kwargs,
                    identifier=self._client_id,
                    clean_session=False if self._persistent else None,
                    keepalive=self._keepalive_s,
                    timeout=10,
                    queue_type=self._delivery,
                ) as client:
                    await client.subscribe(
                        [(t, 1) for t in (*agent_subscriptions(self._cluster), *self._feed_topics)]
                    )
                    self._on_connected(client, down_since)
                    attempt, down_since = 0, None
                    await self._flush_pending_retained(client)
                    await run_together(self._consume(client), self._send_acks(client))
            except aiomqtt.MqttError as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    self._outages += 1
                    log.warning(
                        "broker unreachable; reconnecting with backoff",
                        broker=self._broker.display,
                        error=str(exc),
                    )
            finally:
                self._client = None
                self._connected.clear()
                self._metrics.connected.set(0)
            await asyncio.sleep(
                backoff_delay(attempt, self._reconnect_min_s, self._reconnect_max_s)
            )
            attempt += 1

    def _on_connected(self, client: aiomqtt.Client, down_since: float | None) -> None:
        self._client = client
        self._connects += 1
        self._connected.set()
        self._metrics.connected.set(1)
        if down_since is None:
            log.info("broker connected", broker=self._broker.display, cluster=self._cluster)
        else:
            log.info(
                "broker connection restored",
                broker=self._broker.display,
                outage_s=round(time.monotonic() - down_since, 3),
            )
        self._on_connected_hook()

    async def _flush_pending_retained(self, client: aiomqtt.Client) -> None:
        while self._pending_retained:
            topic, payload = next(iter(self._pending_retained.items()))
            await client.publish(topic, payload, qos=1, retain=True)
            # a newer payload may have replaced it while we awaited
            if self._pending_retained.get(topic) is payload:
                del self._pending_retained[topic]

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Until the connection drops. Messages never come out of this iterator: the
        delivery queue hands each to ``_deliver`` as paho reads it, so this only waits for
        the disconnect that ends the iteration with ``MqttError``."""
        async for message in client.messages:  # pragma: no cover - delivery takes them all
            self._deliver(message)

    def _deliver(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        payload = _payload_bytes(message.payload)
        if self._on_feed is not None and topic.endswith(_FEED_SUFFIXES):
            try:
                self._on_feed(topic, payload)
            except Exception:
                self._internal_error(topic, self._clock())
            return
        self.handle(topic, payload)

    def handle(self, topic: str, payload: bytes) -> None:
        """One received message, start to end. Never raises (but for BaseException)."""
        now = self._clock()
        self._received += 1
        self._received_rate.add(now)
        self._last_message_at = now
        try:
            msg = self._gate.accept(topic, payload, now)
        except WireError as err:
            self._rejected += 1
            if isinstance(err, Refusal) and isinstance(err.message, EventMessage):
                # a resend of an event we have, or one from a boot gone since: either way
                # we have it, so the agent may forget it (and stop resending)
                self._ack(err.message)
            self._log_rejection(topic, err, now)
            self._report_conflicts()
            return
        except Exception:
            self._internal_error(topic, now)
            return
        self._accepted += 1
        self._accepted_rate.add(now)
        if self._gate.has_conflicts:
            self._report_conflicts()
        started = time.perf_counter()
        try:
            if isinstance(msg, StateDigest):
                self._sink.on_state(msg)
            elif isinstance(msg, EventMessage):
                self._sink.on_event(msg)
                self._ack(msg)
            else:
                self._sink.on_status(msg)
        except Exception:
            self._internal_error(topic, now)
        finally:
            self._time_sink(time.perf_counter() - started, topic, now)

    # --- acknowledgements ---------------------------------------------------------------------

    def _ack(self, msg: EventMessage) -> None:
        if not self._should_ack():
            return  # a standby: the leader acknowledges, or the agent resends to it later
        self._acks_due.setdefault(msg.node, []).append(msg.event_id)
        self._ack_wake.set()

    async def _send_acks(self, client: aiomqtt.Client) -> None:
        while True:
            raise_if_cancelled()
            await self._ack_wake.wait()
            self._ack_wake.clear()
            due, self._acks_due = self._acks_due, {}
            for node, event_ids in due.items():
                topic = node_topic(self._cluster, node, Kind.ACK)
                for start in range(0, len(event_ids), ACK_BATCH):
                    batch = event_ids[start:start + ACK_BATCH]
                    ack = AckMessage(cluster=self._cluster, node=node, ts=self._clock(),
                                     event_ids=batch)  # fmt: skip
                    await client.publish(topic, encode(ack), qos=1, retain=False)
                    self._metrics.acks.inc(len(batch))

    def _report_conflicts(self) -> None:
        for conflict in self._gate.take_conflicts():
            self._on_conflict(conflict)

    def _time_sink(self, elapsed: float, topic: str, now: float) -> None:
        self._sink_calls += 1
        self._sink_seconds_total += elapsed
        self._sink_seconds_max = max(self._sink_seconds_max, elapsed)
        self._metrics.sink_took(elapsed)
        if elapsed >= self._slow_sink_s:
            allowed, suppressed = self._log_limiter.allow("slow_sink", now)
            if allowed:
                log.warning(
                    "sink is slow; MQTT intake stalls while it runs",
                    topic=topic,
                    seconds=round(elapsed, 4),
                    suppressed=suppressed,
                )

    def _log_rejection(self, topic: str, err: WireError, now: float) -> None:
        allowed, suppressed = self._log_limiter.allow(err.reason, now)
        if allowed:
            log.warning(
                "agent message rejected",
                reason=err.reason,
                detail=err.detail,
                topic=topic[:200],
                suppressed=suppressed,
            )

    def _internal_error(self, topic: str, now: float) -> None:
        self._internal_errors += 1
        self._gate.count_internal_error(kind_of(topic))
        allowed, suppressed = self._log_limiter.allow(INTERNAL_ERROR, now)
        if allowed:
            log.exception(
                "agent message could not be handled", topic=topic[:200], suppressed=suppressed
            )


_FEED_SUFFIXES = (f"/{Kind.VERDICT.value}", "/cluster/health")


def _delivery_to(
    deliver: Callable[[aiomqtt.Message], None],
) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming-message queue class, made to hand each message on at once.

    aiomqtt puts every message paho reads into this queue, and its iterator then spends a
    new task and an ``asyncio.wait`` on taking each one out again, which costs about as
    much CPU as the coordinator's own handling of a 12 KB state, decoding included.
    Handled where paho reads it instead, a message costs one call. Each socket read is its
    own event-loop step, so timers and the HTTP API still get their turns under a backlog;
    and a slow sink slows the reads (TCP pushes back on the broker, which queues within its
    limits) instead of growing an unbounded queue in this process.
    """

    class DirectDelivery(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            deliver(item)

    return DirectDelivery


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    # aiomqtt decodes nothing itself; numbers and None only come from local publishes
    return b"" if payload is None else str(payload).encode()
