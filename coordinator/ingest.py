"""The coordinator's MQTT intake: validate, order and deduplicate agent messages.

Two halves. :class:`IngestGate` is pure: bytes and a topic in, an accepted message or a
:class:`~gpuwarden_common.wire.WireError` out, with Prometheus counters. :class:`Ingestor` is
the I/O: one aiomqtt connection, reconnected forever, that feeds the gate and hands what it
accepts to an :class:`IngestSink` (the capacity model).

Ordering is per node: each node has a current ``boot_id`` (a new one starts over, and the
boots it replaced are remembered so their late messages are refused) and, for status and
state, the last accepted ``seq``. Retained replays after a reconnect therefore come back
``stale``. Events are not ordered but deduplicated on ``event_id``: an agent resends every
event until the coordinator acknowledges it (:class:`Ingestor` publishes the acks), so a
resend may come after newer messages and must still be taken.

A forged or cloned publisher must not silence the real agent: a status or state stamped
further ahead of the coordinator's clock than ``max_clock_skew_s`` is refused
(``clock_skew``), and a boot that was replaced but keeps talking (its message is newer than
the switch) is taken back as the node's boot and reported as a conflict, never ignored.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiomqtt
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gpuwarden_common.aio import raise_if_cancelled, run_together
from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.wire import (
    TOPIC_ROOT,
    AckMessage,
    AgentMessage,
    EventMessage,
    Kind,
    StateMessage,
    StatusMessage,
    WireError,
    agent_subscriptions,
    cluster_health_topic,
    decode,
    encode,
    node_topic,
    parse_node_topic,
)

log = structlog.get_logger("coordinator.ingest")

# Reasons the gate adds to wire.decode's own (bad_topic, oversized, bad_json,
# unknown_schema, invalid, node_mismatch).
WRONG_CLUSTER = "wrong_cluster"
STALE = "stale"
DUPLICATE = "duplicate"
CLOCK_SKEW = "clock_skew"
INTERNAL_ERROR = "internal_error"
# the most event ids one acknowledgement carries (the wire's bound)
ACK_BATCH = 4096


class Refusal(WireError):
    """A valid message the gate will not pass on; ``message`` is it, decoded."""

    def __init__(self, reason: str, detail: str, message: AgentMessage) -> None:
        super().__init__(reason, detail)
        self.message = message


@dataclass(frozen=True, slots=True)
class BootConflict:
    """Two boots of one node talk at once: a forger, or a cloned machine."""

    node: str
    live_boot: str
    other_boot: str

_UNKNOWN_KIND = "unknown"
_KIND_OF_TYPE = {"status": Kind.STATUS, "state": Kind.STATE, "event": Kind.EVENTS}


# --- metrics -------------------------------------------------------------------------------


class IngestMetrics:
    """The ingest counters, on a registry the caller owns (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "gpuwarden_ingest_messages_total",
            "Agent messages received, by topic kind and outcome "
            "(accepted, rejected, internal_error: accepted but its handling raised).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "gpuwarden_ingest_rejected_total",
            "Agent messages dropped, by reason.",
            ["reason"],
            registry=registry,
        )
        self.connected = Gauge(
            "gpuwarden_ingest_connected",
            "1 while the coordinator's MQTT connection is up and subscribed.",
            registry=registry,
        )
        self.acks = Counter(
            "gpuwarden_ingest_acks_total",
            "Fault events acknowledged back to their agents",
            registry=registry,
        )
        self.boot_conflicts = Counter(
            "gpuwarden_ingest_boot_conflicts_total",
            "Messages from a node's replaced boot that was still talking (forgery or a clone)",
            registry=registry,
        )
        self.sink_seconds = Histogram(
            "gpuwarden_ingest_sink_seconds",
            "Time the sink (the capacity model) took per accepted message.",
            buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0),
            registry=registry,
        )
        # labels() hashes and locks on every call; the hot path reuses the children.
        self._message_children: dict[tuple[str, str], Counter] = {}
        self._reason_children: dict[str, Counter] = {}

    def count(self, kind: str, outcome: str, reason: str | None = None) -> None:
        child = self._message_children.get((kind, outcome))
        if child is None:
            child = self.messages.labels(kind=kind, outcome=outcome)
            self._message_children[(kind, outcome)] = child
        child.inc()
        if reason is not None:
            by_reason = self._reason_children.get(reason)
            if by_reason is None:
                by_reason = self.rejected.labels(reason=reason)
                self._reason_children[reason] = by_reason
            by_reason.inc()


# --- the gate (pure) ------------------------------------------------------------------------


@dataclass(slots=True)
class _Cursor:
    seq: int
    ts: float


@dataclass(slots=True)
class _Boot:
    """One boot's cursors; ``replaced_at`` is the agent time of the first message of the boot
    that replaced it (what it said before that is history, what it says after, a conflict)."""

    boot_id: str
    cursors: dict[Kind, _Cursor] = field(default_factory=dict)
    replaced_at: float = 0.0


@dataclass(slots=True)
class _NodeOrder:
    current: _Boot
    retired: OrderedDict[str, _Boot] = field(default_factory=OrderedDict)


_RETIRED_BOOTS = 4


class IngestGate:
    """Decides which agent messages reach the model. Not thread-safe: one caller.

    ``accept`` raises :class:`WireError` for every refusal (:class:`Refusal`, with the decoded
    message, once it decoded); ``err.reason`` is the metric label. Beyond
    :func:`~gpuwarden_common.wire.decode`'s checks it refuses:

    - ``wrong_cluster``: the topic or the payload names another cluster;
    - ``clock_skew``: a status or state stamped more than ``max_clock_skew_s`` ahead of now;
    - ``stale``: same boot and a ``seq`` not above the last accepted for that node and kind
      (retained replays, reordering), or a message a replaced boot sent before it was
      replaced;
    - ``duplicate``: an event whose ``event_id`` was accepted within the recent window.

    One exception to ``stale``: a lower ``seq`` with a *later* agent timestamp than the
    last accepted is the agent process restarting within the same boot (its counter
    starts at 0 again), so it starts over instead of being refused until the counter
    catches up. A replay carries its original timestamp and stays stale.
    """

    def __init__(
        self,
        cluster: str,
        registry: CollectorRegistry,
        *,
        dedupe_window_s: float = 3600.0,
        dedupe_max: int = 100_000,
        max_nodes: int = 100_000,
        max_clock_skew_s: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.metrics = IngestMetrics(registry)
        self._topic_prefix = f"{TOPIC_ROOT}/{cluster}/"
        self._dedupe_window_s = dedupe_window_s
        self._dedupe_max = dedupe_max
        self._max_nodes = max_nodes
        self._max_skew_s = max_clock_skew_s
        self._nodes: OrderedDict[str, _NodeOrder] = OrderedDict()
        self._recent_events: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._conflicts: list[BootConflict] = []

    def accept(self, topic: str, payload: bytes, now: float) -> AgentMessage:
        kind_label = _kind_of(topic)
        try:
            if not topic.startswith(self._topic_prefix):
                # the rare path: say whether the topic is malformed or another cluster's
                topic_cluster, _, _ = parse_node_topic(topic)
                raise WireError(WRONG_CLUSTER, f"topic cluster {topic_cluster!r}")
            msg = decode(topic, payload)
            if msg.cluster != self.cluster:
                raise WireError(WRONG_CLUSTER, f"payload cluster {msg.cluster!r}")
            self._admit(_KIND_OF_TYPE[msg.type], msg, now)
        except WireError as err:
            self.metrics.count(kind_label, "rejected", err.reason)
            raise
        self.metrics.count(kind_label, "accepted")
        return msg

    def count_internal_error(self, kind: str) -> None:
        """For the caller: a message passed the gate but handling it raised."""
        self.metrics.count(kind, INTERNAL_ERROR, INTERNAL_ERROR)

    def forget_node(self, node: str) -> None:
        """Drop a node's ordering state (the model removed the node)."""
        self._nodes.pop(node, None)

    def take_conflicts(self) -> Sequence[BootConflict]:
        """Boot conflicts seen since the last call, for the caller to report."""
        if not self._conflicts:
            return ()
        found, self._conflicts = self._conflicts, []
        return found

    def _admit(self, kind: Kind, msg: AgentMessage, now: float) -> None:
        """Check order and duplicates; commit only when the message is accepted."""
        event_key: tuple[str, str] | None = None
        if isinstance(msg, EventMessage):
            self._expire_events(now)
            event_key = (msg.node, msg.event_id)
            if event_key in self._recent_events:
                raise Refusal(DUPLICATE, f"event {msg.event_id} from {msg.node}", msg)
        elif msg.ts > now + self._max_skew_s:
            raise Refusal(
                CLOCK_SKEW,
                f"{msg.node}: stamped {msg.ts - now:.0f}s ahead of this coordinator's clock "
                f"(at most {self._max_skew_s:g}s); check the node's NTP",
                msg,
            )
        boot = self._boot_of(msg)
        if event_key is None:
            cursor = boot.cursors.get(kind)
            if cursor is not None and msg.seq <= cursor.seq and msg.ts <= cursor.ts:
                raise Refusal(STALE, f"{msg.node} {kind.value} seq {msg.seq} <= {cursor.seq}",
                              msg)  # fmt: skip
            boot.cursors[kind] = _Cursor(msg.seq, msg.ts)
        self._nodes.move_to_end(msg.node)

        if event_key is not None:
            self._recent_events[event_key] = now
            if len(self._recent_events) > self._dedupe_max:
                self._recent_events.popitem(last=False)

    def _boot_of(self, msg: AgentMessage) -> _Boot:
        """The boot ``msg`` belongs to, made the node's current one; raises for history."""
        order = self._nodes.get(msg.node)
        if order is None:
            order = self._nodes[msg.node] = _NodeOrder(_Boot(msg.boot_id))
            # A hostile or misconfigured publisher inventing node names must not grow memory
            # without bound: the least recently heard node loses its ordering state first.
            while len(self._nodes) > self._max_nodes:
                self._nodes.popitem(last=False)
            return order.current
        if order.current.boot_id == msg.boot_id:
            return order.current
        returning = order.retired.get(msg.boot_id)
        if returning is not None:
            if msg.ts <= returning.replaced_at:
                raise Refusal(STALE, f"{msg.node}: boot {msg.boot_id} was replaced", msg)
            # the boot that was replaced is still talking: two boots at once
            self.metrics.boot_conflicts.inc()
            self._conflicts.append(BootConflict(msg.node, msg.boot_id, order.current.boot_id))
            del order.retired[msg.boot_id]
        else:
            returning = _Boot(msg.boot_id)
        order.current.replaced_at = msg.ts
        order.retired[order.current.boot_id] = order.current
        while len(order.retired) > _RETIRED_BOOTS:
            order.retired.popitem(last=False)
        order.current = returning
        return returning

    def _expire_events(self, now: float) -> None:
        horizon = now - self._dedupe_window_s
        recent = self._recent_events
        while recent:
            oldest_key = next(iter(recent))
            if recent[oldest_key] >= horizon:
                break
            del recent[oldest_key]


# --- small helpers for the I/O half (pure, tested on their own) -----------------------------


class LogLimiter:
    """At most ``per_window`` log lines per key per window; counts what it held back."""

    def __init__(self, per_window: int, window_s: float = 60.0) -> None:
        self._per_window = per_window
        self._window_s = window_s
        self._windows: dict[str, tuple[float, int, int]] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(log this one?, how many were suppressed since the last line logged for key)."""
        start, logged, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self._window_s:
            start, logged = now, 0
        if logged < self._per_window:
            self._windows[key] = (start, logged + 1, 0)
            return True, suppressed
        self._windows[key] = (start, logged, suppressed + 1)
        return False, suppressed + 1


class RateMeter:
    """Events per second over the last ``window_s`` seconds, in one-second buckets."""

    def __init__(self, window_s: int = 10) -> None:
        self._window_s = window_s
        self._buckets: deque[tuple[int, int]] = deque()  # (second, count)

    def add(self, now: float, n: int = 1) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1] = (second, self._buckets[-1][1] + n)
        else:
            self._buckets.append((second, n))
            self._trim(second)

    def rate(self, now: float) -> float:
        self._trim(int(now))
        return sum(count for _, count in self._buckets) / self._window_s

    def _trim(self, second: int) -> None:
        while self._buckets and self._buckets[0][0] <= second - self._window_s:
            self._buckets.popleft()


# --- the I/O half ---------------------------------------------------------------------------


class IngestSink(Protocol):
    """Where accepted messages go. Plain calls on the event loop: keep them quick, they are
    timed (``gpuwarden_ingest_sink_seconds``) and a slow one is logged."""

    def on_status(self, msg: StatusMessage) -> None: ...

    def on_state(self, msg: StateMessage) -> None: ...

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

    # Give the event loop a turn this often under a backlog, so the HTTP API and timers
    # stay live while a flood is drained.
    _YIELD_EVERY = 64

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
        handled = 0
        feed_suffix = (f"/{Kind.VERDICT.value}", "/cluster/health")
        async for message in client.messages:
            topic = message.topic.value
            if self._on_feed is not None and topic.endswith(feed_suffix):
                self._on_feed(topic, _payload_bytes(message.payload))
                continue
            self.handle(topic, _payload_bytes(message.payload))
            handled += 1
            if handled % self._YIELD_EVERY == 0:
                await asyncio.sleep(0)

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
        self._report_conflicts()
        started = time.perf_counter()
        try:
            if isinstance(msg, StateMessage):
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
        self._metrics.sink_seconds.observe(elapsed)
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
        self._gate.count_internal_error(_kind_of(topic))
        allowed, suppressed = self._log_limiter.allow(INTERNAL_ERROR, now)
        if allowed:
            log.exception(
                "agent message could not be handled", topic=topic[:200], suppressed=suppressed
            )


def _kind_of(topic: str) -> str:
    tail = topic.rpartition("/")[2]
    return tail if tail in _KIND_VALUES else _UNKNOWN_KIND


_KIND_VALUES = frozenset(k.value for k in Kind)


def _payload_bytes(payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    # aiomqtt decodes nothing itself; numbers and None only come from local publishes
    return b"" if payload is None else str(payload).encode()
