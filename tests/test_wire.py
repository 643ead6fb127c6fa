from __future__ import annotations

import json

import pytest

from gpuwarden_common.health import Action, Health, Severity
from gpuwarden_common.wire import (
    MAX_PAYLOAD_BYTES,
    EventKind,
    EventMessage,
    HostState,
    Kind,
    StateMessage,
    StatusMessage,
    WireError,
    decode,
    encode,
    node_topic,
)


def _state(node: str = "gpu-1") -> StateMessage:
    return StateMessage(
        cluster="c1",
        node=node,
        seq=3,
        boot_id="b",
        ts=1.0,
        interval_s=10,
        health=Health.HEALTHY,
        action=Action.NONE,
        gpus=[],
        host=HostState(),
    )


def test_state_round_trips_through_encode_and_decode() -> None:
    msg = _state()
    assert decode(node_topic("c1", "gpu-1", Kind.STATE), encode(msg)) == msg


def test_status_and_event_decode_by_topic_kind() -> None:
    status = StatusMessage(cluster="c1", node="n", seq=0, boot_id="b", ts=1, status="online")
    event = EventMessage(
        cluster="c1",
        node="n",
        seq=1,
        boot_id="b",
        ts=1,
        kind=EventKind.XID,
        code="XID-79",
        xid=79,
        severity=Severity.CRITICAL,
        action=Action.REBOOT,
    )
    assert decode(node_topic("c1", "n", Kind.STATUS), encode(status)) == status
    assert decode(node_topic("c1", "n", Kind.EVENTS), encode(event)) == event


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[]", "invalid"),
        (json.dumps({"schema": "gpuwarden/v9"}).encode(), "unknown_schema"),
        (b"x" * (MAX_PAYLOAD_BYTES + 1), "oversized"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode(node_topic("c1", "gpu-1", Kind.STATE), payload)
    assert err.value.reason == reason


def test_payload_naming_another_node_than_its_topic_is_rejected() -> None:
    with pytest.raises(WireError) as err:
        decode(node_topic("c1", "gpu-1", Kind.STATE), encode(_state(node="gpu-2")))
    assert err.value.reason == "node_mismatch"


@pytest.mark.parametrize(
    "topic",
    [
        "gpuwarden/v1/c1/nodes/n",
        "gpuwarden/v2/c1/nodes/n/state",
        "gpuwarden/v1/c1/nodes/n/bogus",
        "gpuwarden/v1/c1/nodes/n/verdict",
    ],
)
def test_topics_outside_the_agent_contract_are_rejected(topic: str) -> None:
    with pytest.raises(WireError) as err:
        decode(topic, encode(_state(node="n")))
    assert err.value.reason == "bad_topic"


def test_node_names_with_mqtt_wildcards_are_invalid() -> None:
    with pytest.raises(WireError) as err:
        decode("gpuwarden/v1/c1/nodes/gpu+1/state", encode(_state(node="gpu+1")))
    assert err.value.reason == "invalid"
