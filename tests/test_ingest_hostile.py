"""Hostile input at the gate: whatever arrives on whatever topic, the only failure is a
WireError (which the Ingestor counts and drops), and a node cannot speak for another."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from coordinator.ingest_gate import IngestGate
from gpuwarden_common.health import Action, Health
from gpuwarden_common.wire import (
    MAX_PAYLOAD_BYTES,
    GpuState,
    HostState,
    Kind,
    StateMessage,
    WireError,
    encode,
    node_topic,
)

CLUSTER = "c1"

node_names = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z")
# MQTT topic levels as a hostile publisher could send them (no '/' inside a level)
any_level = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="/"), max_size=30
)
kinds = st.sampled_from([*Kind, "cmd", ""])
topics = st.one_of(
    st.builds(
        lambda cluster, node, kind: (
            f"gpuwarden/v1/{cluster}/nodes/{node}/{kind.value if isinstance(kind, Kind) else kind}"
        ),
        st.sampled_from([CLUSTER, "c2", ""]),
        st.one_of(node_names, any_level),
        kinds,
    ),
    st.text(max_size=80),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Keys the message models know, so objects get past the first missing field and deep into
# validation, with values of any type.
field_names = st.sampled_from(
    [
        "schema",
        "cluster",
        "node",
        "seq",
        "boot_id",
        "ts",
        "type",
        "status",
        "interval_s",
        "health",
        "action",
        "gpus",
        "host",
        "findings",
        "event_id",
        "kind",
        "code",
        "severity",
        "index",
        "uuid",
        "processes",
        "ecc",
        "pcie",
    ]
)
envelope = st.fixed_dictionaries(
    {
        "schema": st.sampled_from(["gpuwarden/v1", "gpuwarden/v2"]),
        "cluster": st.sampled_from([CLUSTER, "c2"]),
        "node": node_names,
        "seq": st.integers(min_value=-5, max_value=2**64),
        "boot_id": st.text(max_size=70),
        "ts": st.one_of(st.floats(allow_nan=False), st.integers()),
    }
)
json_objects = st.one_of(
    st.dictionaries(st.one_of(field_names, st.text(max_size=8)), json_values, max_size=12),
    st.builds(
        lambda base, extra: {**base, **extra},
        envelope,
        st.dictionaries(field_names, json_values, max_size=8),
    ),
)


def _gate() -> IngestGate:
    return IngestGate(CLUSTER, CollectorRegistry())


def _accept_or_wire_error(gate: IngestGate, topic: str, payload: bytes) -> bool:
    """True when accepted; a WireError is the one allowed failure (it names its reason)."""
    try:
        gate.accept(topic, payload, 1000.0)
    except WireError as err:
        assert err.reason
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(topic=topics, payload=st.binary(max_size=512))
def test_arbitrary_bytes_on_any_topic_raise_nothing_but_wire_error(
    topic: str, payload: bytes
) -> None:
    _accept_or_wire_error(_gate(), topic, payload)


@settings(max_examples=300, deadline=None)
@given(topic=topics, obj=json_objects)
def test_arbitrary_json_objects_on_any_topic_raise_nothing_but_wire_error(
    topic: str, obj: dict[str, Any]
) -> None:
    _accept_or_wire_error(_gate(), topic, json.dumps(obj).encode())


@settings(max_examples=100, deadline=None)
@given(
    node=node_names, kind=st.sampled_from([Kind.STATUS, Kind.STATE, Kind.EVENTS]), obj=json_objects
)
def test_well_addressed_json_objects_raise_nothing_but_wire_error(
    node: str, kind: Kind, obj: dict[str, Any]
) -> None:
    obj = {**obj, "node": node, "cluster": CLUSTER}
    _accept_or_wire_error(_gate(), node_topic(CLUSTER, node, kind), json.dumps(obj).encode())


@settings(max_examples=50, deadline=None)
@given(size=st.integers(min_value=MAX_PAYLOAD_BYTES + 1, max_value=MAX_PAYLOAD_BYTES + 4096))
def test_anything_over_the_size_limit_is_refused_unparsed(size: int) -> None:
    payload = b"[" * size  # would nest far too deep if it were parsed
    try:
        _gate().accept(node_topic(CLUSTER, "n1", Kind.STATE), payload, 0.0)
    except WireError as err:
        assert err.reason == "oversized"
    else:
        raise AssertionError("an oversized payload was accepted")


def _state(node: str, gpus: int = 1) -> StateMessage:
    return StateMessage(
        cluster=CLUSTER,
        node=node,
        seq=1,
        boot_id="b",
        ts=1.0,
        interval_s=10,
        health=Health.HEALTHY,
        action=Action.NONE,
        host=HostState(),
        gpus=[GpuState(index=i, uuid=f"GPU-{i}") for i in range(gpus)],
    )


@settings(max_examples=100, deadline=None)
@given(speaker=node_names, victim=node_names)
def test_a_node_cannot_publish_for_another_node(speaker: str, victim: str) -> None:
    gate = _gate()
    topic = node_topic(CLUSTER, speaker, Kind.STATE)
    payload = encode(_state(victim))
    if speaker == victim:
        assert gate.accept(topic, payload, 0.0).node == victim
        return
    try:
        gate.accept(topic, payload, 0.0)
    except WireError as err:
        assert err.reason == "node_mismatch"
    else:
        raise AssertionError(f"{speaker} published as {victim}")


@settings(max_examples=50, deadline=None)
@given(json_objects)
def test_garbage_between_valid_messages_does_not_disturb_ordering(obj: dict[str, Any]) -> None:
    gate = _gate()
    topic = node_topic(CLUSTER, "n1", Kind.STATE)
    gate.accept(topic, encode(_state("n1")), 0.0)
    assume(not _accept_or_wire_error(gate, topic, json.dumps(obj).encode()))
    try:
        gate.accept(topic, encode(_state("n1")), 0.0)
    except WireError as err:
        assert err.reason == "stale"
    else:
        raise AssertionError("a replay was accepted after garbage")
