"""The coordinator's MQTT intake: the gate's rules, then the Ingestor against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiomqtt
import pytest
import structlog
import structlog.testing
from prometheus_client import CollectorRegistry

from coordinator.ingest import Ingestor, backoff_delay
from coordinator.ingest_gate import IngestGate
from coordinator.ingest_rates import LogLimiter, RateMeter
from gpuwarden_common.broker import BrokerSettings
from gpuwarden_common.health import Action, Health, Severity
from gpuwarden_common.wire import (
    MAX_PAYLOAD_BYTES,
    AgentMessage,
    EventKind,
    EventMessage,
    Kind,
    StateDigest,
    StateMessage,
    StatusMessage,
    WireError,
    encode,
    node_topic,
)
from tests.brokers import Mosquitto
from tests.mqtt_helpers import listening

CLUSTER = "c1"
WAIT_S = 10.0  # a bound for waits that normally end in milliseconds
NODE = "gpu-1"


def state(
    seq: int,
    *,
    boot: str = "boot-a",
    ts: float | None = None,
    node: str = NODE,
    cluster: str = CLUSTER,
) -> StateDigest:
    """A state as the coordinator decodes it (the gate hands out digests)."""
    return StateDigest(
        cluster=cluster,
        node=node,
        seq=seq,
        boot_id=boot,
        ts=100.0 + seq if ts is None else ts,
        interval_s=10,
        health=Health.HEALTHY,
        action=Action.NONE,
        gpus=[],
    )


def status(seq: int, value: str = "online", *, boot: str = "boot-a") -> StatusMessage:
    return StatusMessage(
        cluster=CLUSTER,
        node=NODE,
        seq=seq,
        boot_id=boot,
        ts=100.0 + seq,
        status=value,  # type: ignore[arg-type]
    )


def event(seq: int, event_id: str = "e-1", *, boot: str = "boot-a") -> EventMessage:
    return EventMessage(
        cluster=CLUSTER,
        node=NODE,
        seq=seq,
        boot_id=boot,
        ts=100.0 + seq,
        event_id=event_id,
        kind=EventKind.XID,
        code="XID-79",
        xid=79,
        severity=Severity.CRITICAL,
        action=Action.REBOOT,
    )


def topic(kind: Kind, node: str = NODE, cluster: str = CLUSTER) -> str:
    return node_topic(cluster, node, kind)


def kind_of(msg: AgentMessage) -> Kind:
    if isinstance(msg, StateDigest | StateMessage):
        return Kind.STATE
    if isinstance(msg, EventMessage):
        return Kind.EVENTS
    return Kind.STATUS


def offer(gate: IngestGate, msg: AgentMessage, now: float = 1000.0) -> AgentMessage:
    return gate.accept(topic(kind_of(msg), msg.node), encode(msg), now)


def rejection(gate: IngestGate, msg: AgentMessage, now: float = 1000.0) -> str:
    with pytest.raises(WireError) as caught:
        offer(gate, msg, now)
    return caught.value.reason


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def gate(registry: CollectorRegistry) -> IngestGate:
    return IngestGate(CLUSTER, registry, dedupe_window_s=60)


# --- gate: what it accepts -------------------------------------------------------------------


def test_a_valid_state_is_accepted_and_returned_decoded(gate: IngestGate) -> None:
    assert offer(gate, state(1)) == state(1)


def test_each_kind_keeps_its_own_sequence(gate: IngestGate) -> None:
    offer(gate, state(5))
    assert offer(gate, status(3)) == status(3)


def test_a_higher_seq_on_the_same_boot_is_accepted(gate: IngestGate) -> None:
    offer(gate, state(1))
    assert offer(gate, state(2)) == state(2)


def test_gaps_in_seq_are_fine(gate: IngestGate) -> None:
    offer(gate, state(1))
    assert offer(gate, state(40)) == state(40)


# --- gate: each rejection reason --------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_topic", "payload", "reason"),
    [
        ("gpuwarden/v1/c1/nodes/gpu-1", b"{}", "bad_topic"),
        ("gpuwarden/v1/c1/nodes/gpu-1/verdict", b"{}", "bad_topic"),
        ("gpuwarden/v1/c1/nodes/gpu-1/state", b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized"),
        ("gpuwarden/v1/c1/nodes/gpu-1/state", b"{not json", "bad_json"),
        ("gpuwarden/v1/c1/nodes/gpu-1/state", b'{"schema": "gpuwarden/v9"}', "unknown_schema"),
        ("gpuwarden/v1/c1/nodes/gpu-1/state", b'{"schema": "gpuwarden/v1"}', "invalid"),
    ],
)
def test_decode_rejections_carry_their_reason(
    gate: IngestGate, bad_topic: str, payload: bytes, reason: str
) -> None:
    with pytest.raises(WireError) as caught:
        gate.accept(bad_topic, payload, 0.0)
    assert caught.value.reason == reason


def test_a_payload_naming_another_node_than_its_topic_is_node_mismatch(gate: IngestGate) -> None:
    with pytest.raises(WireError) as caught:
        gate.accept(topic(Kind.STATE, node="gpu-2"), encode(state(1)), 0.0)
    assert caught.value.reason == "node_mismatch"


def test_a_topic_of_another_cluster_is_wrong_cluster(gate: IngestGate) -> None:
    msg = state(1, cluster="c2")
    with pytest.raises(WireError) as caught:
        gate.accept(topic(Kind.STATE, cluster="c2"), encode(msg), 0.0)
    assert caught.value.reason == "wrong_cluster"


def test_a_payload_of_another_cluster_on_our_topic_is_wrong_cluster(gate: IngestGate) -> None:
    with pytest.raises(WireError) as caught:
        gate.accept(topic(Kind.STATE), encode(state(1, cluster="c2")), 0.0)
    assert caught.value.reason == "wrong_cluster"


def test_a_seq_not_above_the_last_on_the_same_boot_is_stale(gate: IngestGate) -> None:
    offer(gate, state(5))
    assert rejection(gate, state(4)) == "stale"


def test_a_retained_replay_of_the_last_message_is_stale(gate: IngestGate) -> None:
    offer(gate, state(5))
    assert rejection(gate, state(5)) == "stale"


def test_the_agents_will_is_newer_than_its_online_status(gate: IngestGate) -> None:
    # the agent reserves the will's seq after the online message's (agent/publisher.py)
    offer(gate, status(1, "online"))
    assert offer(gate, status(2, "offline")) == status(2, "offline")


def test_a_late_will_from_the_previous_session_is_stale(gate: IngestGate) -> None:
    offer(gate, status(1, "online"))
    offer(gate, status(3, "online"))
    assert rejection(gate, status(2, "offline")) == "stale"


def test_a_new_boot_starts_the_sequence_over(gate: IngestGate) -> None:
    offer(gate, state(500, boot="boot-a"))
    assert offer(gate, state(0, boot="boot-b")) == state(0, boot="boot-b")


def test_a_new_boot_on_one_kind_resets_the_others(gate: IngestGate) -> None:
    offer(gate, status(499, boot="boot-a"))
    offer(gate, state(500, boot="boot-a"))
    offer(gate, status(0, boot="boot-b"))
    assert offer(gate, state(1, boot="boot-b")) == state(1, boot="boot-b")


def test_a_message_a_replaced_boot_sent_before_the_switch_is_stale(gate: IngestGate) -> None:
    offer(gate, state(7, boot="boot-a", ts=100.0))
    offer(gate, state(0, boot="boot-b", ts=200.0))
    assert rejection(gate, state(8, boot="boot-a", ts=150.0)) == "stale"


def test_a_replaced_boot_still_talking_is_taken_back_and_reported_as_a_conflict(
    gate: IngestGate, registry: CollectorRegistry
) -> None:
    offer(gate, state(7, boot="boot-a", ts=100.0))
    offer(gate, state(0, boot="forged", ts=200.0))  # a forger announces a new boot

    live = state(8, boot="boot-a", ts=210.0)

    assert offer(gate, live) == live
    assert [(c.live_boot, c.other_boot) for c in gate.take_conflicts()] == [("boot-a", "forged")]
    assert metric(registry, "gpuwarden_ingest_boot_conflicts_total") == 1


def test_a_status_stamped_far_in_the_future_is_refused_and_blocks_nothing(
    gate: IngestGate,
) -> None:
    # a forged huge seq from the future would otherwise make every genuine report stale
    assert rejection(gate, state(10**12, ts=1000.0 + 3600), now=1000.0) == "clock_skew"
    genuine = state(9, ts=1000.0)
    assert offer(gate, genuine, now=1000.0) == genuine


def test_an_event_is_never_refused_for_its_sequence(gate: IngestGate) -> None:
    offer(gate, event(9, "e-9"))
    resent = event(3, "e-3")  # kept by the agent until acknowledged, sent again later

    assert offer(gate, resent) == resent


def test_an_agent_restart_within_a_boot_starts_over_when_its_clock_moved_on(
    gate: IngestGate,
) -> None:
    offer(gate, state(500, ts=1000.0), now=2000.0)
    restarted = state(0, ts=2000.0)
    assert offer(gate, restarted, now=2000.0) == restarted


def test_a_repeated_event_id_is_duplicate(gate: IngestGate) -> None:
    offer(gate, event(1, "e-1"))
    assert rejection(gate, event(2, "e-1")) == "duplicate"


def test_a_redelivered_event_is_duplicate_rather_than_stale(gate: IngestGate) -> None:
    offer(gate, event(1, "e-1"))
    assert rejection(gate, event(1, "e-1")) == "duplicate"


def test_an_event_id_is_forgotten_after_the_dedupe_window(gate: IngestGate) -> None:
    offer(gate, event(1, "e-1"), now=1000.0)
    offer(gate, event(2, "e-2"), now=1000.0)
    again = event(3, "e-1")
    assert offer(gate, again, now=1061.0) == again


def test_the_dedupe_window_keeps_at_most_dedupe_max_ids(registry: CollectorRegistry) -> None:
    gate = IngestGate(CLUSTER, registry, dedupe_max=2)
    for n, eid in enumerate(["e-1", "e-2", "e-3"], start=1):
        offer(gate, event(n, eid))
    again = event(4, "e-1")
    assert offer(gate, again) == again


def test_a_rejected_event_does_not_enter_the_dedupe_window(gate: IngestGate) -> None:
    offer(gate, state(1, boot="boot-a", ts=100.0))
    offer(gate, state(1, boot="boot-b", ts=200.0))
    old_boot = event(5, "e-2", boot="boot-a")  # stamped 105: before boot-b, history
    assert rejection(gate, old_boot) == "stale"
    again = event(6, "e-2", boot="boot-b")
    assert offer(gate, again) == again


def test_the_least_recently_heard_node_is_forgotten_past_max_nodes(
    registry: CollectorRegistry,
) -> None:
    gate = IngestGate(CLUSTER, registry, max_nodes=2)
    for node in ("n1", "n2", "n3"):
        offer(gate, state(5, node=node))
    replay = state(5, node="n1")
    assert offer(gate, replay) == replay


def test_a_forgotten_node_starts_over(gate: IngestGate) -> None:
    offer(gate, state(5))
    gate.forget_node(NODE)
    assert offer(gate, state(5)) == state(5)


# --- gate: counters ---------------------------------------------------------------------------


def test_an_accepted_message_moves_the_accepted_counter(
    gate: IngestGate, registry: CollectorRegistry
) -> None:
    offer(gate, state(1))
    name = "gpuwarden_ingest_messages_total"
    assert metric(registry, name, kind="state", outcome="accepted") == 1


def test_a_rejection_moves_both_the_outcome_and_the_reason_counters(
    gate: IngestGate, registry: CollectorRegistry
) -> None:
    offer(gate, state(1))
    rejection(gate, state(1))
    rejection(gate, state(0))
    name = "gpuwarden_ingest_messages_total"
    assert metric(registry, name, kind="state", outcome="rejected") == 2
    assert metric(registry, "gpuwarden_ingest_rejected_total", reason="stale") == 2


def test_an_unparseable_topic_is_counted_under_kind_unknown(
    gate: IngestGate, registry: CollectorRegistry
) -> None:
    with pytest.raises(WireError):
        gate.accept("not/a/gpuwarden/topic", b"{}", 0.0)
    name = "gpuwarden_ingest_messages_total"
    assert metric(registry, name, kind="unknown", outcome="rejected") == 1


def test_two_gates_on_their_own_registries_count_independently() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    offer(IngestGate(CLUSTER, first), state(1))
    IngestGate(CLUSTER, second)
    name = "gpuwarden_ingest_messages_total"
    assert metric(second, name, kind="state", outcome="accepted") == 0


# --- pure helpers of the I/O half --------------------------------------------------------------


def test_the_log_limiter_allows_n_per_window_and_counts_the_rest() -> None:
    limiter = LogLimiter(per_window=2, window_s=60)
    verdicts = [limiter.allow("bad_json", 10.0)[0] for _ in range(5)]
    assert verdicts == [True, True, False, False, False]


def test_the_log_limiter_reports_what_it_suppressed_on_the_next_window() -> None:
    limiter = LogLimiter(per_window=1, window_s=60)
    for _ in range(4):
        limiter.allow("bad_json", 10.0)
    assert limiter.allow("bad_json", 71.0) == (True, 3)


def test_the_log_limiter_keeps_reasons_apart() -> None:
    limiter = LogLimiter(per_window=1, window_s=60)
    limiter.allow("bad_json", 10.0)
    assert limiter.allow("stale", 10.0)[0]


def test_the_rate_meter_averages_over_its_window() -> None:
    meter = RateMeter(window_s=10)
    for second in range(10):
        meter.add(1000.0 + second, n=50)
    assert meter.rate(1009.5) == 50.0


def test_the_rate_meter_forgets_counts_older_than_its_window() -> None:
    meter = RateMeter(window_s=10)
    meter.add(1000.0, n=500)
    assert meter.rate(1010.0) == 0.0


def test_backoff_grows_to_its_cap_and_is_never_zero() -> None:
    delays = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.0) for n in range(10)]
    assert delays[0] == 0.25
    assert delays[-1] == 15.0
    assert delays == sorted(delays)


def test_backoff_jitter_spans_the_upper_half_of_the_step() -> None:
    assert backoff_delay(2, 1.0, 30.0, rand=lambda: 1.0) == 4.0


# --- the Ingestor's message handling, without a broker -----------------------------------------


class NullSink:
    def on_status(self, msg: StatusMessage) -> None:
        pass

    def on_state(self, msg: StateMessage) -> None:
        pass

    def on_event(self, msg: EventMessage) -> None:
        pass


def test_a_flood_of_one_rejection_reason_logs_only_the_limit(registry: CollectorRegistry) -> None:
    broker = BrokerSettings.from_url("mqtt://127.0.0.1:1")
    ingestor = Ingestor(
        broker,
        CLUSTER,
        NullSink(),
        IngestGate(CLUSTER, registry),
        log_per_reason_per_minute=3,
        clock=lambda: 1000.0,
    )
    with structlog.testing.capture_logs() as logs:
        for _ in range(1000):
            ingestor.handle(topic(Kind.STATE), b"{broken")
    assert [entry["reason"] for entry in logs] == ["bad_json"] * 3


def test_handle_never_raises_when_the_gate_itself_fails(registry: CollectorRegistry) -> None:
    class BrokenGate(IngestGate):
        def accept(self, topic: str, payload: bytes, now: float) -> AgentMessage:
            raise KeyError("a bug")

    broker = BrokerSettings.from_url("mqtt://127.0.0.1:1")
    ingestor = Ingestor(broker, CLUSTER, NullSink(), BrokenGate(CLUSTER, registry))
    with structlog.testing.capture_logs():
        ingestor.handle(topic(Kind.STATE), encode(state(1)))
    assert ingestor.stats().internal_errors == 1


# --- the Ingestor against a real Mosquitto -----------------------------------------------------


@dataclass
class RecordingSink:
    received: list[AgentMessage] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    fail_on: Callable[[AgentMessage], bool] = lambda _m: False

    def _take(self, msg: AgentMessage) -> None:
        if self.fail_on(msg):
            raise RuntimeError("the model choked")
        self.received.append(msg)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()

    async def wait_for(self, count: int) -> list[AgentMessage]:
        async with asyncio.timeout(WAIT_S), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)
        return list(self.received)

    def on_status(self, msg: StatusMessage) -> None:
        self._take(msg)

    def on_state(self, msg: StateMessage) -> None:
        self._take(msg)

    def on_event(self, msg: EventMessage) -> None:
        self._take(msg)


@contextlib.asynccontextmanager
async def ingesting(
    port: int,
    sink: RecordingSink,
    registry: CollectorRegistry,
    gate: IngestGate | None = None,
    *,
    should_ack: Callable[[], bool] = lambda: True,
    client_id: str | None = None,
    on_feed: Callable[[str, bytes], None] | None = None,
) -> AsyncIterator[Ingestor]:
    broker = BrokerSettings.from_url(f"mqtt://127.0.0.1:{port}")
    ingestor = Ingestor(
        broker,
        CLUSTER,
        sink,
        gate or IngestGate(CLUSTER, registry),
        client_id=client_id,
        persistent_session=client_id is not None,
        on_feed=on_feed,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        should_ack=should_ack,
    )
    task = asyncio.create_task(ingestor.run(), name="ingestor")
    try:
        async with asyncio.timeout(WAIT_S):
            await ingestor.wait_connected()
        yield ingestor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def agent(port: int) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        yield client


async def send(client: aiomqtt.Client, msg: AgentMessage, *, retain: bool = False) -> None:
    await client.publish(topic(kind_of(msg), msg.node), encode(msg), qos=1, retain=retain)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll: connection state and counters have no event of their own to await."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


@pytest.mark.broker
async def test_a_valid_message_reaches_the_sink(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink()
    async with ingesting(port, sink, registry), agent(port) as client:
        await send(client, state(1))
        received = await sink.wait_for(1)
    assert received == [state(1)]


@pytest.mark.broker
async def test_each_kind_reaches_its_own_sink_method(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink()
    async with ingesting(port, sink, registry), agent(port) as client:
        await send(client, status(1))
        await send(client, state(2))
        await send(client, event(3))
        received = await sink.wait_for(3)
    assert sorted(type(m).__name__ for m in received) == [
        "EventMessage",
        "StateDigest",
        "StatusMessage",
    ]


@pytest.mark.broker
async def test_a_malformed_message_is_counted_and_the_next_valid_one_still_arrives(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink()
    async with ingesting(port, sink, registry) as ingestor, agent(port) as client:
        await client.publish(topic(Kind.STATE), b"{broken", qos=1)
        await send(client, state(1))
        received = await sink.wait_for(1)
        stats = ingestor.stats()
    assert received == [state(1)]
    assert stats.rejected == 1
    assert metric(registry, "gpuwarden_ingest_rejected_total", reason="bad_json") == 1


@pytest.mark.broker
async def test_a_flood_of_bad_messages_is_counted_and_service_goes_on(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink()
    async with ingesting(port, sink, registry) as ingestor, agent(port) as client:
        for n in range(1000):
            await client.publish(topic(Kind.EVENTS), json.dumps({"n": n}).encode(), qos=1)
        await send(client, state(1))
        received = await sink.wait_for(1)
        stats = ingestor.stats()
    assert received == [state(1)]
    assert stats.rejected == 1000
    assert metric(registry, "gpuwarden_ingest_rejected_total", reason="invalid") == 1000


@pytest.mark.broker
async def test_a_sink_that_raises_is_counted_as_internal_error_and_the_loop_goes_on(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink(fail_on=lambda m: m.seq == 1)
    async with ingesting(port, sink, registry) as ingestor, agent(port) as client:
        await send(client, state(1))
        await send(client, state(2))
        received = await sink.wait_for(1)
        stats = ingestor.stats()
    assert received == [state(2)]
    assert stats.internal_errors == 1
    assert metric(registry, "gpuwarden_ingest_rejected_total", reason="internal_error") == 1


@pytest.mark.broker
async def test_a_feed_handler_that_raises_is_counted_and_the_connection_carries_on(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    sink = RecordingSink()

    def choke(_topic: str, _payload: bytes) -> None:
        raise RuntimeError("the feed choked")

    async with (
        ingesting(port, sink, registry, on_feed=choke) as ingestor,
        agent(port) as client,
    ):
        await client.publish(node_topic(CLUSTER, NODE, Kind.VERDICT), b"{}", qos=1)
        await send(client, state(1))
        received = await sink.wait_for(1)
        stats = ingestor.stats()
    assert received == [state(1)]
    assert (stats.internal_errors, stats.connects) == (1, 1)


@pytest.mark.broker
async def test_a_retained_state_is_delivered_once_and_its_replay_is_stale(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    async with agent(mosquitto.port) as client:
        await send(client, state(1), retain=True)
    sink = RecordingSink()
    gate = IngestGate(CLUSTER, registry)
    # two subscriptions through one gate: the second is sent the retained copy again
    for _ in range(2):
        async with ingesting(mosquitto.port, sink, registry, gate=gate) as ingestor:
            await eventually(lambda: ingestor.stats().received == 1)
    assert sink.received == [state(1)]
    assert metric(registry, "gpuwarden_ingest_rejected_total", reason="stale") == 1


@pytest.mark.broker
async def test_a_backlog_is_drained_in_turns_that_leave_the_event_loop_live(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    """Messages are handled where they are read, a read per event-loop step: other work
    (the HTTP API, timers) keeps its turns while a coordinator back from an outage takes
    what its session queued."""
    backlog = 2000
    async with ingesting(mosquitto.port, RecordingSink(), registry, client_id="coord"):
        pass  # the persistent session and its subscriptions now exist
    async with agent(mosquitto.port) as client:
        for seq in range(1, backlog + 1):
            await send(client, state(seq))
    sink = RecordingSink()
    seen_by_other_work: list[int] = []

    async def other_work() -> None:
        while True:
            seen_by_other_work.append(len(sink.received))
            await asyncio.sleep(0)

    async with contextlib.AsyncExitStack() as stack:
        ticker = asyncio.create_task(other_work())
        stack.callback(ticker.cancel)
        await stack.enter_async_context(
            ingesting(mosquitto.port, sink, CollectorRegistry(), client_id="coord")
        )
        received = await sink.wait_for(backlog)
    assert [m.seq for m in received] == list(range(1, backlog + 1))
    turns_mid_drain = {n for n in seen_by_other_work if 0 < n < backlog}
    assert len(turns_mid_drain) >= backlog // 10  # a turn at least every ten messages


@pytest.mark.broker
async def test_the_ingestor_survives_a_broker_restart_and_receives_again(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = RecordingSink()
    async with ingesting(mosquitto.port, sink, registry) as ingestor:
        mosquitto.kill()
        await eventually(lambda: not ingestor.connected)
        mosquitto.start()
        await eventually(lambda: ingestor.connected)
        async with agent(mosquitto.port) as client:
            await send(client, state(1))
        received = await sink.wait_for(1)
        stats = ingestor.stats()
    assert received == [state(1)]
    assert (stats.connects, stats.outages) == (2, 1)


@pytest.mark.broker
async def test_publish_retained_goes_out_on_the_ingestors_connection(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    verdict_topic = node_topic(CLUSTER, NODE, Kind.VERDICT)
    async with ingesting(port, RecordingSink(), registry) as ingestor:
        assert await ingestor.publish_retained(verdict_topic, b'{"v": 1}')
    async with agent(port) as client:
        await client.subscribe(verdict_topic, qos=1)
        async with asyncio.timeout(WAIT_S):
            message = await anext(aiter(client.messages))
    assert (message.payload, message.retain) == (b'{"v": 1}', True)


@pytest.mark.broker
async def test_a_retained_publish_made_while_disconnected_goes_out_on_reconnect(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    port = mosquitto.port
    verdict_topic = node_topic(CLUSTER, NODE, Kind.VERDICT)
    async with ingesting(port, RecordingSink(), registry) as ingestor:
        mosquitto.kill()
        await eventually(lambda: not ingestor.connected)
        assert not await ingestor.publish_retained(verdict_topic, b'{"v": 1}')
        assert not await ingestor.publish_retained(verdict_topic, b'{"v": 2}')
        mosquitto.start()
        await eventually(lambda: ingestor.connected)
        async with agent(port) as client:
            await client.subscribe(verdict_topic, qos=1)
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(client.messages))
    assert message.payload == b'{"v": 2}'


# --- acknowledgements ---------------------------------------------------------------------------

ACKS = f"gpuwarden/v1/{CLUSTER}/nodes/+/ack"


@pytest.mark.broker
async def test_an_ingested_event_is_acknowledged_on_its_nodes_ack_topic(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = RecordingSink()
    async with (
        ingesting(mosquitto.port, sink, registry),
        listening(mosquitto.port, ACKS) as acks,
        agent(mosquitto.port) as client,
    ):
        await send(client, event(1, "e-1"))
        heard = await acks.wait_for(lambda m: m)
    assert heard[0].topic == f"gpuwarden/v1/{CLUSTER}/nodes/{NODE}/ack"
    assert heard[0].json()["event_ids"] == ["e-1"]
    assert not heard[0].retain


@pytest.mark.broker
async def test_a_resent_event_is_acknowledged_again_but_ingested_once(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = RecordingSink()
    async with (
        ingesting(mosquitto.port, sink, registry),
        listening(mosquitto.port, ACKS) as acks,
        agent(mosquitto.port) as client,
    ):
        await send(client, event(1, "e-1"))
        await send(client, event(1, "e-1"))  # the first ack was lost: the agent resends
        heard = await acks.wait_for(lambda m: sum(len(x.json()["event_ids"]) for x in m) >= 2)
    assert [m.event_id for m in sink.received if isinstance(m, EventMessage)] == ["e-1"]
    assert [i for x in heard for i in x.json()["event_ids"]] == ["e-1", "e-1"]


@pytest.mark.broker
async def test_a_standby_coordinator_acknowledges_nothing(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = RecordingSink()
    async with (
        ingesting(mosquitto.port, sink, registry, should_ack=lambda: False),
        listening(mosquitto.port, ACKS) as acks,
        agent(mosquitto.port) as client,
    ):
        await send(client, event(1, "e-1"))
        await sink.wait_for(1)
        await asyncio.sleep(0.3)
    assert acks.messages == []


@pytest.mark.broker
async def test_an_event_the_model_choked_on_is_not_acknowledged(
    mosquitto: Mosquitto, registry: CollectorRegistry
) -> None:
    sink = RecordingSink(fail_on=lambda m: isinstance(m, EventMessage))
    with structlog.testing.capture_logs():
        async with (
            ingesting(mosquitto.port, sink, registry) as ingestor,
            listening(mosquitto.port, ACKS) as acks,
            agent(mosquitto.port) as client,
        ):
            await send(client, event(1, "e-1"))
            await eventually(lambda: ingestor.stats().internal_errors == 1)
            await asyncio.sleep(0.3)
    assert acks.messages == []

