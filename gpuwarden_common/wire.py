"""The MQTT wire contract (DESIGN.md, "Wire contract"): topics and schema-versioned JSON.

Both daemons import this module and nothing else to speak to each other. Messages are
``msgspec`` structs: the coordinator validates every payload with :func:`decode` (types,
bounds, patterns, all in one pass, about three times faster than a plain ``json.loads`` into
dicts) and treats :class:`WireError` as "count it, drop it, carry on". Construction does not
validate; only what crosses the wire is untrusted.
"""

from __future__ import annotations

import functools
import re
import uuid
from enum import StrEnum
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, field

from gpuwarden_common.health import Action, Finding, Health, Severity

SCHEMA: Final = "gpuwarden/v1"
TOPIC_ROOT = "gpuwarden/v1"
# A node's state for 8 GPUs with processes is ~8 KiB; 256 KiB leaves room for 72-GPU racks
# while keeping a hostile publisher from making the coordinator parse megabytes.
MAX_PAYLOAD_BYTES = 256 * 1024

# Kubernetes node names are DNS subdomains; MQTT forbids '+', '#' and '/' inside a level.
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

Name = Annotated[str, Meta(pattern=NAME_PATTERN, max_length=253)]
Index = Annotated[int, Meta(ge=0, le=1023)]
Count = Annotated[int, Meta(ge=0)]
Short = Annotated[str, Meta(max_length=64)]
Text = Annotated[str, Meta(max_length=2048)]


class WireError(ValueError):
    """A message that does not meet the contract. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Kind(StrEnum):
    STATUS = "status"
    STATE = "state"
    EVENTS = "events"
    VERDICT = "verdict"
    # coordinator -> agent: the events it has ingested (the agent keeps each one until then)
    ACK = "ack"


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


def node_topic(cluster: str, node: str, kind: Kind) -> str:
    return f"{TOPIC_ROOT}/{cluster}/nodes/{node}/{kind.value}"


def cluster_health_topic(cluster: str) -> str:
    return f"{TOPIC_ROOT}/{cluster}/cluster/health"


def agent_subscriptions(cluster: str) -> list[str]:
    """What the coordinator subscribes to: every agent-published topic of the cluster."""
    base = f"{TOPIC_ROOT}/{cluster}/nodes/+"
    return [f"{base}/{k.value}" for k in (Kind.STATUS, Kind.STATE, Kind.EVENTS)]


# A fleet's topics repeat with every report: parsed once each (an invalid one raises, and an
# exception is never cached). Bounded: invented names cannot grow it without end.
@functools.lru_cache(maxsize=65_536)
def parse_node_topic(topic: str) -> tuple[str, str, Kind]:
    """``gpuwarden/v1/<cluster>/nodes/<node>/<kind>`` -> (cluster, node, kind)."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT or parts[3] != "nodes":
        raise WireError("bad_topic", topic[:200])
    cluster, node, kind = parts[2], parts[4], parts[5]
    try:
        return cluster, node, Kind(kind)
    except ValueError:
        raise WireError("bad_topic", topic[:200]) from None


class _Struct(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Wire structs stay out of the cyclic garbage collector (``gc=False``): a state decodes
    to some fifty of them, every message, and tracking them made collections part of every
    message's cost. That is safe because they cannot form a cycle: they are frozen and hold
    only scalars, strings and lists of other wire structs, which nothing appends to."""


class _Message(_Struct, frozen=True, kw_only=True):
    schema: Literal["gpuwarden/v1"] = SCHEMA
    cluster: Name
    node: Name
    seq: Count
    boot_id: Annotated[str, Meta(min_length=1, max_length=64)]
    ts: Annotated[float, Meta(ge=0)]  # Unix seconds, the agent's clock


class StatusMessage(_Message, frozen=True, kw_only=True):
    type: Literal["status"] = "status"
    status: Literal["online", "offline"]


class EccCounts(_Struct, frozen=True, kw_only=True):
    volatile_corrected: int | None = None
    volatile_uncorrected: int | None = None
    aggregate_corrected: int | None = None
    aggregate_uncorrected: int | None = None


class RowRemap(_Struct, frozen=True, kw_only=True):
    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False


class RetiredPages(_Struct, frozen=True, kw_only=True):
    single_bit: int = 0
    double_bit: int = 0
    pending: bool = False


class Pcie(_Struct, frozen=True, kw_only=True):
    gen: int | None = None
    max_gen: int | None = None
    width: int | None = None
    max_width: int | None = None
    replay_count: int | None = None


class NvLink(_Struct, frozen=True, kw_only=True):
    links_total: int = 0
    links_up: int = 0
    crc_errors: int = 0
    replay_errors: int = 0
    recovery_errors: int = 0


class GpuProcess(_Struct, frozen=True, kw_only=True):
    pid: Count
    used_memory_bytes: int | None = None
    name: Annotated[str, Meta(max_length=256)] | None = None


class OwnerKind(StrEnum):
    """Who a GPU's work belongs to (``GpuOwner.kind``).

    The wire field is a plain string, not this enum, so that a kind added later reaches an
    older coordinator as an unknown string (to be treated as ``unknown``) instead of making
    it reject the whole state message.
    """

    K8S_POD = "k8s-pod"  # pod_uid, and container_id when the process is in a container
    SLURM_JOB = "slurm-job"  # slurm_job_id
    CONTAINER = "container"  # a container outside Kubernetes (docker, podman): container_id
    HOST = "host"  # a cgroup that is none of the above: a login session, a system service
    UNKNOWN = "unknown"  # the agent could not tell (no /proc entry, attribution off)


class UtilizationSource(StrEnum):
    """Where ``GpuState.utilization_*_pct`` came from (a plain string on the wire, as above)."""

    SAMPLES = "samples"  # NVML's samples since the previous read, averaged (DCGM's way)
    INSTANT = "instant"  # nvmlDeviceGetUtilizationRates: NVML's latest sample period only


class Attribution(StrEnum):
    """How the agent attributes GPU work on this node (``StateMessage.attribution``)."""

    CGROUP = "cgroup"  # from /proc/<pid>/cgroup of each process NVML reports
    OFF = "off"  # disabled (--proc-root off): every owner is unknown
    # the agent runs in another PID namespace than the host's, where NVML's PIDs mean
    # other processes or none (a container without hostPID): every owner is unknown
    NO_HOST_PID = "no-host-pid"


class GpuOwner(_Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One workload on a GPU: the processes NVML reports, grouped by the cgroup they run in.

    The agent reads owners from cgroup paths, which carry a pod's UID but never its namespace
    or name: the coordinator maps ``pod_uid`` to the pod through the Kubernetes API.
    Figures cover this owner's processes on this GPU only; ``None`` means "not readable".
    Fields left at their default are not sent.
    """

    kind: Short  # an OwnerKind value
    pod_uid: Short | None = None
    container_id: Annotated[str, Meta(max_length=128)] | None = None
    slurm_job_id: Count | None = None
    pids: Annotated[list[Count], Meta(max_length=1024)] = field(default_factory=list)
    used_memory_bytes: Count | None = None
    # NVML's per-process SM and memory-controller utilization since the previous read,
    # summed over the pids (capped at 100); None where the GPU gives no per-process figures
    sm_util_pct: Annotated[float, Meta(ge=0, le=100)] | None = None
    memory_util_pct: Annotated[float, Meta(ge=0, le=100)] | None = None


class GpuState(_Struct, frozen=True, kw_only=True):
    """One GPU as the agent last saw it. ``None`` means "not readable on this GPU"."""

    index: Index
    uuid: Annotated[str, Meta(max_length=128)]
    name: Annotated[str, Meta(max_length=128)] = ""
    serial: Short | None = None
    pci_bus_id: Short = ""
    health: Health = Health.UNKNOWN
    action: Action = Action.NONE
    lost: bool = False
    # averaged over the interval where NVML keeps samples (see utilization_source)
    utilization_gpu_pct: float | None = None
    utilization_memory_pct: float | None = None
    utilization_source: Short | None = None  # a UtilizationSource value; None: not read
    # seconds from the oldest to the newest sample averaged (source "samples" only)
    utilization_window_s: Annotated[float, Meta(ge=0)] | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    clock_sm_mhz: int | None = None
    clock_mem_mhz: int | None = None
    clock_event_reasons: Annotated[list[str], Meta(max_length=32)] = field(default_factory=list)
    ecc_enabled: bool | None = None
    ecc: EccCounts = field(default_factory=EccCounts)
    row_remap: RowRemap | None = None
    retired_pages: RetiredPages | None = None
    pcie: Pcie = field(default_factory=Pcie)
    nvlink: NvLink = field(default_factory=NvLink)
    processes: Annotated[list[GpuProcess], Meta(max_length=1024)] = field(default_factory=list)
    # the same processes grouped by workload; empty when no process runs
    owners: Annotated[list[GpuOwner], Meta(max_length=1024)] = field(default_factory=list)


class HostState(_Struct, frozen=True, kw_only=True):
    hostname: Annotated[str, Meta(max_length=253)] = ""
    cpu_percent: float | None = None
    cpu_count: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    disk_path: Annotated[str, Meta(max_length=256)] = "/"
    disk_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    uptime_s: float | None = None


class StateMessage(_Message, frozen=True, kw_only=True):
    """The agent's full, retained snapshot of its node."""

    type: Literal["state"] = "state"
    interval_s: Annotated[float, Meta(gt=0)]
    instance_type: Annotated[str, Meta(max_length=128)] | None = None
    driver_version: Short | None = None
    gpu_backend: Literal["nvml", "sim"] = "nvml"
    gpus_expected: Annotated[int, Meta(ge=0, le=1024)] | None = None
    health: Health
    action: Action
    gpus: Annotated[list[GpuState], Meta(max_length=1024)]
    host: HostState
    findings: Annotated[list[Finding], Meta(max_length=4096)] = field(default_factory=list)
    attribution: Short | None = None  # an Attribution value; None from agents before it


# --- what the coordinator reads of a state ------------------------------------------------
# A state carries every reading (clocks, ECC, PCIe, NVLink, the host) for the agent's own
# /metrics and for operators; the coordinator's model uses a few of them. Decoding only those
# costs a third less per message, which is most of the ingest path's own cost. Each digest
# field is the full struct's field, name and type (tests/test_wire.py holds them together).


class ProcessDigest(_Struct, frozen=True, kw_only=True):
    pid: Count


class GpuDigest(_Struct, frozen=True, kw_only=True):
    index: Index
    uuid: Annotated[str, Meta(max_length=128)]
    health: Health = Health.UNKNOWN
    action: Action = Action.NONE
    lost: bool = False
    utilization_gpu_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    processes: Annotated[list[ProcessDigest], Meta(max_length=1024)] = field(
        default_factory=list
    )
    owners: Annotated[list[GpuOwner], Meta(max_length=1024)] = field(default_factory=list)


class StateDigest(_Message, frozen=True, kw_only=True):
    """A :class:`StateMessage` as the coordinator decodes it: what its model reads."""

    type: Literal["state"] = "state"
    interval_s: Annotated[float, Meta(gt=0)]
    instance_type: Annotated[str, Meta(max_length=128)] | None = None
    driver_version: Short | None = None
    gpus_expected: Annotated[int, Meta(ge=0, le=1024)] | None = None
    health: Health
    action: Action
    gpus: Annotated[list[GpuDigest], Meta(max_length=1024)]
    findings: Annotated[list[Finding], Meta(max_length=4096)] = field(default_factory=list)
    attribution: Short | None = None


class EventKind(StrEnum):
    XID = "xid"
    ECC = "ecc"
    GPU_LOST = "gpu_lost"
    HEALTH_CHANGE = "health_change"


def _event_id() -> str:
    return uuid.uuid4().hex


class EventMessage(_Message, frozen=True, kw_only=True):
    """One fault, sent at once. ``event_id`` makes spool redelivery idempotent."""

    type: Literal["event"] = "event"
    event_id: Short = field(default_factory=_event_id)
    kind: EventKind
    source: Literal["nvml", "kmsg", "poll", "sim"] = "poll"
    gpu_index: Index | None = None
    gpu_uuid: Annotated[str, Meta(max_length=128)] | None = None
    pci_bus_id: Short | None = None
    code: Short
    xid: int | None = None
    severity: Severity
    action: Action = Action.NONE
    message: Text = ""
    health_from: Health | None = None
    health_to: Health | None = None
    observed_ts: float | None = None  # when the fault was seen


class EventRef(_Struct, frozen=True, kw_only=False):
    """Just the id of an encoded event (the agent reads it back from its spool)."""

    event_id: str


class AckMessage(_Struct, frozen=True, kw_only=True):
    """The coordinator has ingested these events of ``node`` (or had them already): the
    agent may forget them. Not retained; an agent that misses one resends, and is acked
    again."""

    schema: Literal["gpuwarden/v1"] = SCHEMA
    type: Literal["ack"] = "ack"
    cluster: Name
    node: Name
    ts: float
    event_ids: Annotated[list[Short], Meta(max_length=4096)]


class NodeVerdictMessage(_Struct, frozen=True, kw_only=True):
    """The coordinator's decision on a node: the health feed for other tools."""

    schema: Literal["gpuwarden/v1"] = SCHEMA
    type: Literal["verdict"] = "verdict"
    cluster: Name
    node: Name
    ts: float
    lifecycle: str
    health: Health
    action: Action
    reason: str = ""
    schedulable: bool
    gpus_total: int = 0
    gpus_healthy: int = 0


class ClusterHealthMessage(_Struct, frozen=True, kw_only=True):
    schema: Literal["gpuwarden/v1"] = SCHEMA
    type: Literal["cluster_health"] = "cluster_health"
    cluster: Name
    ts: float
    nodes_total: int
    nodes_by_lifecycle: dict[str, int]
    gpus_total: int
    gpus_healthy: int
    gpus_unhealthy: int
    gpus_pending_recovery: int
    remediation_paused: bool = False
    paused_reason: str = ""


AgentMessage = StatusMessage | StateDigest | EventMessage
_DECODERS: dict[Kind, msgspec.json.Decoder[StatusMessage] | msgspec.json.Decoder[StateDigest]
                | msgspec.json.Decoder[EventMessage]] = {
    Kind.STATUS: msgspec.json.Decoder(StatusMessage),
    Kind.STATE: msgspec.json.Decoder(StateDigest),
    Kind.EVENTS: msgspec.json.Decoder(EventMessage),
}
_FULL_STATE_DECODER = msgspec.json.Decoder(StateMessage)
_ENCODER = msgspec.json.Encoder()
_ACK_DECODER = msgspec.json.Decoder(AckMessage)
_EVENT_REF_DECODER = msgspec.json.Decoder(EventRef)


def encode(message: msgspec.Struct) -> bytes:
    return _ENCODER.encode(message)


def to_builtins(message: msgspec.Struct) -> dict[str, object]:
    """Plain JSON-ready dicts, for APIs and logs."""
    out = msgspec.to_builtins(message)
    assert isinstance(out, dict)
    return out


def decode(topic: str, payload: bytes | bytearray | str) -> AgentMessage:
    """Validate an agent message received on ``topic``, as the coordinator reads it (a state
    as its :class:`StateDigest`; :func:`decode_state` gives the whole state).

    Raises :class:`WireError` with one of the reasons ``bad_topic``, ``oversized``,
    ``bad_json``, ``unknown_schema``, ``invalid`` or ``node_mismatch``.
    """
    _, topic_node, kind = parse_node_topic(topic)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise WireError("bad_topic", f"agents do not publish {kind.value}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        msg = decoder.decode(payload)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "`$.schema`" in text:
            raise WireError("unknown_schema", "schema is not gpuwarden/v1") from None
        raise WireError("invalid", text[:300]) from None
    except msgspec.DecodeError as exc:
        raise WireError("bad_json", str(exc)[:200]) from None
    if msg.node != topic_node:
        raise WireError("node_mismatch", f"topic says {topic_node!r}, payload says {msg.node!r}")
    return msg


def decode_state(payload: bytes | bytearray | str) -> StateMessage:
    """A whole state message, every reading validated. Raises :class:`WireError`."""
    try:
        return _FULL_STATE_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise WireError("invalid", str(exc)[:300]) from None
    except msgspec.DecodeError as exc:
        raise WireError("bad_json", str(exc)[:200]) from None


def decode_ack(payload: bytes | bytearray | str) -> AckMessage:
    """Validate an acknowledgement the agent received. Raises :class:`WireError`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return _ACK_DECODER.decode(payload)
    except msgspec.ValidationError as exc:
        raise WireError("invalid", str(exc)[:300]) from None
    except msgspec.DecodeError as exc:
        raise WireError("bad_json", str(exc)[:200]) from None


def event_id_of(payload: bytes) -> str | None:
    """The ``event_id`` of an encoded event, or None when it has none."""
    try:
        return _EVENT_REF_DECODER.decode(payload).event_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
