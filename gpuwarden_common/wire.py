"""The MQTT wire contract (DESIGN.md, "Wire contract"): topics and schema-versioned JSON.

Both daemons import this module and nothing else to speak to each other. Validation is
pydantic's: the coordinator calls :func:`decode` on every payload and treats
:class:`WireError` as "count it, drop it, carry on".
"""

from __future__ import annotations

import re
import uuid
from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuwarden_common.health import Action, Finding, Health, Severity

SCHEMA: Final = "gpuwarden/v1"
TOPIC_ROOT = "gpuwarden/v1"
# A node's state for 8 GPUs with processes is ~10 KiB; 256 KiB leaves room for 72-GPU
# racks while keeping a hostile publisher from making the coordinator parse megabytes.
MAX_PAYLOAD_BYTES = 256 * 1024

# Kubernetes node names are DNS subdomains; MQTT forbids '+', '#' and '/' inside a level.
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$"
_NAME_RE = re.compile(NAME_PATTERN)

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=253)]


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


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_: Literal["gpuwarden/v1"] = Field(default=SCHEMA, alias="schema")
    cluster: Name
    node: Name
    seq: int = Field(ge=0)
    boot_id: str = Field(min_length=1, max_length=64)
    ts: float = Field(ge=0, description="Unix time, seconds, of the agent's clock")


class StatusMessage(_Message):
    type: Literal["status"] = "status"
    status: Literal["online", "offline"]


class EccCounts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    volatile_corrected: int | None = None
    volatile_uncorrected: int | None = None
    aggregate_corrected: int | None = None
    aggregate_uncorrected: int | None = None


class RowRemap(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False


class RetiredPages(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    single_bit: int = 0
    double_bit: int = 0
    pending: bool = False


class Pcie(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    gen: int | None = None
    max_gen: int | None = None
    width: int | None = None
    max_width: int | None = None
    replay_count: int | None = None


class NvLink(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    links_total: int = 0
    links_up: int = 0
    crc_errors: int = 0
    replay_errors: int = 0
    recovery_errors: int = 0


class GpuProcess(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    pid: int = Field(ge=0)
    used_memory_bytes: int | None = None
    name: str | None = Field(default=None, max_length=256)


class GpuState(BaseModel):
    """One GPU as the agent last saw it. ``None`` means "not readable on this GPU"."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    index: int = Field(ge=0, le=1023)
    uuid: str = Field(max_length=128)
    name: str = Field(default="", max_length=128)
    serial: str | None = Field(default=None, max_length=64)
    pci_bus_id: str = Field(default="", max_length=64)
    health: Health = Health.UNKNOWN
    action: Action = Action.NONE
    lost: bool = False
    utilization_gpu_pct: float | None = None
    utilization_memory_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    clock_sm_mhz: int | None = None
    clock_mem_mhz: int | None = None
    clock_event_reasons: list[str] = Field(default_factory=list, max_length=32)
    ecc_enabled: bool | None = None
    ecc: EccCounts = Field(default_factory=EccCounts)
    row_remap: RowRemap | None = None
    retired_pages: RetiredPages | None = None
    pcie: Pcie = Field(default_factory=Pcie)
    nvlink: NvLink = Field(default_factory=NvLink)
    processes: list[GpuProcess] = Field(default_factory=list, max_length=1024)


class HostState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    hostname: str = Field(default="", max_length=253)
    cpu_percent: float | None = None
    cpu_count: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    disk_path: str = Field(default="/", max_length=256)
    disk_used_bytes: int | None = None
    disk_total_bytes: int | None = None
    uptime_s: float | None = None


class StateMessage(_Message):
    """The agent's full, retained snapshot of its node."""

    type: Literal["state"] = "state"
    interval_s: float = Field(gt=0)
    instance_type: str | None = Field(default=None, max_length=128)
    driver_version: str | None = Field(default=None, max_length=64)
    gpu_backend: Literal["nvml", "sim"] = "nvml"
    gpus_expected: int | None = Field(default=None, ge=0, le=1024)
    health: Health
    action: Action
    gpus: list[GpuState] = Field(max_length=1024)
    host: HostState
    findings: list[Finding] = Field(default_factory=list, max_length=4096)


class EventKind(StrEnum):
    XID = "xid"
    ECC = "ecc"
    GPU_LOST = "gpu_lost"
    HEALTH_CHANGE = "health_change"


class EventMessage(_Message):
    """One fault, sent at once. ``event_id`` makes spool redelivery idempotent."""

    type: Literal["event"] = "event"
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=64)
    kind: EventKind
    source: Literal["nvml", "kmsg", "poll", "sim"] = "poll"
    gpu_index: int | None = Field(default=None, ge=0, le=1023)
    gpu_uuid: str | None = Field(default=None, max_length=128)
    pci_bus_id: str | None = Field(default=None, max_length=64)
    code: str = Field(max_length=64)
    xid: int | None = None
    severity: Severity
    action: Action = Action.NONE
    message: str = Field(default="", max_length=2048)
    health_from: Health | None = None
    health_to: Health | None = None
    observed_ts: float | None = Field(default=None, description="when the fault was seen")


class NodeVerdictMessage(BaseModel):
    """The coordinator's decision on a node: the health feed for other tools."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    schema_: Literal["gpuwarden/v1"] = Field(default=SCHEMA, alias="schema")
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


class ClusterHealthMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    schema_: Literal["gpuwarden/v1"] = Field(default=SCHEMA, alias="schema")
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


AgentMessage = StatusMessage | StateMessage | EventMessage
_BY_KIND: dict[Kind, type[StatusMessage] | type[StateMessage] | type[EventMessage]] = {
    Kind.STATUS: StatusMessage,
    Kind.STATE: StateMessage,
    Kind.EVENTS: EventMessage,
}


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=False).encode()


def decode(topic: str, payload: bytes | bytearray | str) -> AgentMessage:
    """Validate an agent message received on ``topic``.

    Raises :class:`WireError` with one of the reasons ``bad_topic``, ``oversized``,
    ``bad_json``, ``unknown_schema``, ``invalid`` or ``node_mismatch``.
    """
    _, topic_node, kind = parse_node_topic(topic)
    model = _BY_KIND.get(kind)
    if model is None:
        raise WireError("bad_topic", f"agents do not publish {kind.value}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        msg = model.model_validate_json(payload)
    except ValidationError as exc:
        raise _classify(exc) from None
    if msg.node != topic_node:
        raise WireError("node_mismatch", f"topic says {topic_node!r}, payload says {msg.node!r}")
    return msg


def _classify(exc: ValidationError) -> WireError:
    errors = exc.errors(include_url=False)
    if any(e["type"] in {"json_invalid", "json_type"} for e in errors):
        return WireError("bad_json", errors[0]["msg"][:200])
    if any(e["loc"][:1] == ("schema",) for e in errors):
        return WireError("unknown_schema", "schema is not gpuwarden/v1")
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    return WireError("invalid", f"{where}: {first['msg']}"[:300])
