from __future__ import annotations

import gc
import json

import msgspec
import pytest

from gpuwarden_common.health import Action, Health, Severity
from gpuwarden_common.wire import (
    MAX_PAYLOAD_BYTES,
    Attribution,
    EventKind,
    EventMessage,
    GpuDigest,
    GpuOwner,
    GpuProcess,
    GpuState,
    HostState,
    Kind,
    OwnerKind,
    ProcessDigest,
    StateDigest,
    StateMessage,
    StatusMessage,
    UtilizationSource,
    WireError,
    decode,
    decode_state,
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


def test_state_round_trips_through_encode_and_decode_state() -> None:
    msg = _state()
    assert decode_state(encode(msg)) == msg


def test_the_coordinator_decodes_a_state_into_what_its_model_reads() -> None:
    gpu = GpuState(index=2, uuid="GPU-2", health=Health.UNHEALTHY, action=Action.REBOOT,
                   utilization_gpu_pct=97.0, memory_used_bytes=5, memory_total_bytes=9,
                   temperature_c=80.0, processes=[GpuProcess(pid=41, name="python")])  # fmt: skip
    msg = msgspec.structs.replace(_state(), gpus=[gpu], instance_type="p5.48xlarge")

    digest = decode(node_topic("c1", "gpu-1", Kind.STATE), encode(msg))

    assert isinstance(digest, StateDigest)
    assert (digest.seq, digest.instance_type, digest.health) == (msg.seq, "p5.48xlarge", msg.health)
    [read] = digest.gpus
    assert (read.index, read.health, read.utilization_gpu_pct) == (2, Health.UNHEALTHY, 97.0)
    assert [p.pid for p in read.processes] == [41]


@pytest.mark.parametrize(
    ("digest", "full"),
    [(StateDigest, StateMessage), (GpuDigest, GpuState), (ProcessDigest, GpuProcess)],
)
def test_every_digest_field_is_the_full_messages_own(digest: type, full: type) -> None:
    # one place for each fact: the digest may leave fields out, never change one
    full_fields = {f.name: f for f in msgspec.structs.fields(full)}
    for field in msgspec.structs.fields(digest):
        assert field.name in full_fields, field.name
        if field.name not in {"gpus", "processes"}:  # lists of the digests themselves
            assert field.type == full_fields[field.name].type, field.name


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


# -- workload attribution: additive fields an older coordinator ignores ----------------------

POD_UID = "5f0b6a1e-8c3d-4b2a-9e7f-0123456789ab"


def _attributed_state() -> StateMessage:
    owner = GpuOwner(
        kind=OwnerKind.K8S_POD,
        pod_uid=POD_UID,
        container_id="ab" * 32,
        pids=[4100, 4101],
        used_memory_bytes=40 * 2**30,
        sm_util_pct=87.5,
        memory_util_pct=41.0,
    )
    gpu = GpuState(
        index=0,
        uuid="GPU-0",
        utilization_gpu_pct=88.0,
        utilization_source=UtilizationSource.SAMPLES,
        utilization_window_s=9.8,
        owners=[owner, GpuOwner(kind=OwnerKind.HOST, pids=[77])],
    )
    return msgspec.structs.replace(_state(), gpus=[gpu], attribution=Attribution.CGROUP)


def test_a_state_with_owners_round_trips() -> None:
    msg = _attributed_state()

    assert decode_state(encode(msg)) == msg


def test_the_coordinator_reads_the_owners_and_attribution_a_state_carries() -> None:
    msg = _attributed_state()

    digest = decode(node_topic("c1", "gpu-1", Kind.STATE), encode(msg))

    assert isinstance(digest, StateDigest)
    assert digest.attribution == "cgroup"
    assert digest.gpus[0].owners == msg.gpus[0].owners


def test_a_decoded_state_leaves_nothing_for_the_cyclic_garbage_collector_to_track() -> None:
    digest = decode(node_topic("c1", "gpu-1", Kind.STATE), encode(_attributed_state()))
    assert isinstance(digest, StateDigest)
    gpu = digest.gpus[0]

    structs = [digest, gpu, *gpu.owners]

    assert not any(gc.is_tracked(s) for s in structs)


def test_owner_fields_left_at_their_default_are_not_sent() -> None:
    payload = json.loads(encode(GpuOwner(kind=OwnerKind.HOST, pids=[77])))

    assert payload == {"kind": "host", "pids": [77]}


def test_a_state_from_an_agent_that_predates_owners_still_decodes() -> None:
    payload = json.loads(encode(_attributed_state()))
    payload.pop("attribution")
    for gpu in payload["gpus"]:
        for key in ("owners", "utilization_source", "utilization_window_s"):
            gpu.pop(key)

    raw = json.dumps(payload).encode()

    msg = decode_state(raw)
    assert msg.attribution is None
    assert msg.gpus[0].owners == [] and msg.gpus[0].utilization_source is None
    digest = decode(node_topic("c1", "gpu-1", Kind.STATE), raw)
    assert isinstance(digest, StateDigest)
    assert digest.attribution is None and digest.gpus[0].owners == []


def test_fields_and_owner_kinds_added_by_a_later_agent_do_not_reject_the_state() -> None:
    payload = json.loads(encode(_attributed_state()))
    payload["a_field_from_the_future"] = 1
    payload["gpus"][0]["a_field_from_the_future"] = 1
    payload["gpus"][0]["owners"][0]["a_field_from_the_future"] = 1
    payload["gpus"][0]["owners"][0]["kind"] = "vm"

    digest = decode(node_topic("c1", "gpu-1", Kind.STATE), json.dumps(payload).encode())

    assert isinstance(digest, StateDigest)
    assert digest.gpus[0].owners[0].kind == "vm"


def test_an_owner_with_more_pids_than_the_bound_is_invalid() -> None:
    payload = json.loads(encode(_attributed_state()))
    payload["gpus"][0]["owners"][0]["pids"] = list(range(1025))

    with pytest.raises(WireError) as err:
        decode(node_topic("c1", "gpu-1", Kind.STATE), json.dumps(payload).encode())
    assert err.value.reason == "invalid"
