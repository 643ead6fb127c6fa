"""The coordinator's picture of the fleet: one :class:`NodeRecord` per node, and capacity.

Mutable and single-threaded: the coordinator's event loop owns it. Built for 10,000 nodes of
8 GPUs and thousands of state messages a second, so records are ``__slots__`` dataclasses,
only what decisions, the API and governance read is kept (never whole pydantic messages),
``ok`` findings are dropped (the health already says them), and each record keeps its GPU
counts so that :meth:`ClusterModel.capacity` is one pass over nodes, not GPUs.

Capacity puts every GPU in exactly one bucket, so the totals always add up; the buckets are
defined, in the words the API, dashboard and docs use, in :mod:`coordinator.definitions`
(``_Tally.add`` is their one implementation). Degraded GPUs are healthy: schedulable, warn
only. A node's GPU total is the larger of what its agent reports (or expects) and what the
cluster's scheduler configures (Slurm's GRES, ``cluster_gpus``), so GPUs an agent cannot see
count as unhealthy.

A ``suspect`` node is in service: its GPUs count by their last reported health, so a broker
outage, which silences everyone at once, does not shrink capacity and set off preemption.

Only *members* count: nodes that sent a full state report (or that the coordinator holds out
of service) and that the cluster knows, when the back end keeps an inventory
(``members``). Anyone can publish on a broker without an ACL: an invented node name must
never add capacity, count toward the safety rules or be acted on, and strangers that fall
silent are forgotten (:meth:`ClusterModel.sweep_strangers`), so they cannot grow state
without bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from coordinator.actuators import NodeFacts
from coordinator.findings import SeenFinding, after_event, after_report
from coordinator.lifecycle import (
    IN_SERVICE,
    OUT_OF_SERVICE,
    REBOOT_CLASS,
    SERVICEABLE,
    Lifecycle,
    LifecycleConfig,
    Reason,
    Transition,
    is_silent,
)
from gpuwarden_common.health import (
    Action,
    Finding,
    Health,
    Severity,
    strongest_action,
    worst_health,
)
from gpuwarden_common.wire import (
    EventKind,
    EventMessage,
    GpuDigest,
    GpuOwner,
    StateDigest,
    StatusMessage,
)

UNKNOWN_INSTANCE_TYPE = "unknown"


@dataclass(slots=True, frozen=True)
class GpuView:
    """One GPU as its agent last reported it."""

    index: int
    uuid: str
    health: Health
    action: Action
    lost: bool
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    pids: tuple[int, ...]
    owners: tuple[GpuOwner, ...] = ()
    """Who the GPU's processes belong to (the wire's ``GpuOwner``, from agents with
    attribution), as sent: the ledger reads them, the ingest path only keeps them."""

    @property
    def process_count(self) -> int:
        return len(self.pids)

    @property
    def serviceable(self) -> bool:
        return self.health in SERVICEABLE and not self.lost

    @classmethod
    def of(cls, gpu: GpuDigest) -> GpuView:
        return cls(
            index=gpu.index,
            uuid=gpu.uuid,
            health=gpu.health,
            action=gpu.action,
            lost=gpu.lost,
            utilization_pct=gpu.utilization_gpu_pct,
            memory_used_bytes=gpu.memory_used_bytes,
            memory_total_bytes=gpu.memory_total_bytes,
            pids=tuple(p.pid for p in gpu.processes),
            # absent from the wire schema before attribution: an older agent sends none
            owners=tuple(gpu.owners),
        )


@dataclass(slots=True, frozen=True)
class LastEvent:
    code: str
    severity: Severity
    action: Action
    gpu_index: int | None
    at: float


@dataclass(slots=True)
class NodeRecord:
    """Everything the coordinator keeps about one node. Times are the coordinator's clock
    (``now`` passed to the ``apply_*`` methods), never the agent's."""

    name: str
    lifecycle: Lifecycle = Lifecycle.HEALTHY
    lifecycle_since: float = 0.0
    reason: str = ""
    message: str = ""
    # agent liveness
    agent_online: bool = False
    agent_boot_id: str = ""  # boot of the latest sign of life, to ignore a stale LWT
    last_seen: float = 0.0
    offline_since: float | None = None
    # latest state report
    boot_id: str = ""
    last_seq: int = -1
    last_state_at: float = 0.0
    last_state_ts: float = 0.0  # the agent's own stamp on that report
    interval_s: float = 0.0
    agent_instance_type: str | None = None
    label_instance_type: str | None = None
    driver_version: str | None = None
    health: Health = Health.UNKNOWN
    action: Action = Action.NONE
    gpus: tuple[GpuView, ...] = ()
    gpus_expected: int | None = None
    cluster_gpus: int | None = None  # what the cluster's scheduler configures (Slurm GRES)
    findings: tuple[Finding, ...] = ()  # the non-ok ones
    seen_findings: tuple[SeenFinding, ...] = ()  # the same, with first seen and count
    gpus_total: int = 0
    gpus_serviceable: int = 0
    healthy_since: float | None = None
    last_event: LastEvent | None = None
    events_total: int = 0
    # remediation memory
    out_boot_id: str | None = None
    last_reboot_remediation_at: float | None = None
    reboot_remediation_boot_id: str | None = None
    # operator
    hold: bool = False
    clear_requested: bool = False

    @property
    def instance_type(self) -> str:
        """The node's label wins (the cloud's word); the agent's guess fills in."""
        return self.label_instance_type or self.agent_instance_type or UNKNOWN_INSTANCE_TYPE

    @property
    def in_service(self) -> bool:
        return self.lifecycle in IN_SERVICE

    @property
    def gpus_healthy(self) -> int:
        return self.gpus_serviceable if self.in_service else 0


@dataclass(frozen=True, slots=True)
class GpuCounts:
    """GPU buckets of a set of nodes; ``healthy + unhealthy + pending_recovery == total``."""

    nodes: int = 0
    total: int = 0
    healthy: int = 0
    unhealthy: int = 0
    pending_recovery: int = 0


@dataclass(frozen=True, slots=True)
class Capacity:
    """A snapshot of the fleet's capacity. ``by_instance_type`` keys are instance types
    (``"unknown"`` when neither label nor agent says), ``nodes_by_lifecycle`` has every
    lifecycle state, zeros included."""

    cluster: GpuCounts
    by_instance_type: Mapping[str, GpuCounts]
    nodes_by_lifecycle: Mapping[Lifecycle, int]


@dataclass(slots=True)
class _Tally:
    nodes: int = 0
    total: int = 0
    healthy: int = 0
    unhealthy: int = 0
    pending_recovery: int = 0

    def add(self, record: NodeRecord) -> None:
        self.nodes += 1
        self.total += record.gpus_total
        if record.in_service:
            self.healthy += record.gpus_serviceable
            self.unhealthy += record.gpus_total - record.gpus_serviceable
        else:
            self.pending_recovery += record.gpus_total

    def frozen(self) -> GpuCounts:
        return GpuCounts(
            self.nodes, self.total, self.healthy, self.unhealthy, self.pending_recovery
        )


@dataclass(slots=True)
class ClusterModel:
    """The fleet. ``apply_*`` return False for a message they ignored (stale, or about an
    unknown node that has nothing to tell). ``max_report_gap_s`` is the longest pause between
    state reports that still counts as "steadily" for the recovery clock (use the offline
    grace)."""

    max_report_gap_s: float = 60.0
    # the nodes the cluster knows (None: the back end keeps no inventory, or has not said yet)
    members: frozenset[str] | None = None
    _nodes: dict[str, NodeRecord] = field(default_factory=dict, init=False, repr=False)

    # -- agent messages --------------------------------------------------------------

    def apply_state(self, msg: StateDigest, now: float) -> bool:
        record = self._nodes.get(msg.node)
        if record is None:
            record = self._nodes[msg.node] = NodeRecord(msg.node, lifecycle_since=now)
        new_boot = msg.boot_id != record.boot_id
        if not new_boot and msg.seq <= record.last_seq:
            return False
        gap = now - record.last_state_at
        self._alive(record, msg.boot_id, now)
        if new_boot or gap > self.max_report_gap_s:
            record.healthy_since = None
        if record.out_boot_id is None and record.lifecycle in OUT_OF_SERVICE:
            # restored out of service with no record of its boot: demand a boot after this one
            record.out_boot_id = msg.boot_id
        record.boot_id = msg.boot_id
        record.last_seq = msg.seq
        record.last_state_at = now
        record.last_state_ts = msg.ts
        record.interval_s = msg.interval_s
        record.agent_instance_type = msg.instance_type
        record.driver_version = msg.driver_version
        record.health = msg.health
        record.action = msg.action
        record.gpus = tuple(GpuView.of(g) for g in msg.gpus)
        record.gpus_expected = msg.gpus_expected
        record.findings = tuple(f for f in msg.findings if f.severity is not Severity.OK)
        record.seen_findings = after_report(record.seen_findings, record.findings, now)
        self._count_gpus(record)
        if msg.health in SERVICEABLE:
            if record.healthy_since is None:
                record.healthy_since = now
        else:
            record.healthy_since = None
        return True

    def apply_status(self, msg: StatusMessage, now: float) -> bool:
        record = self._nodes.get(msg.node)
        if msg.status == "online":
            if record is None:
                record = self._nodes[msg.node] = NodeRecord(msg.node, lifecycle_since=now)
            self._alive(record, msg.boot_id, now)
            return True
        # An offline status for a node we never heard, or the will of an earlier session
        # arriving after the agent came back on a new boot, says nothing about now.
        if record is None or msg.boot_id != record.agent_boot_id:
            return False
        record.agent_online = False
        record.offline_since = now
        record.healthy_since = None
        return True

    def apply_event(self, msg: EventMessage, now: float) -> bool:
        record = self._nodes.get(msg.node)
        if record is None:
            record = self._nodes[msg.node] = NodeRecord(msg.node, lifecycle_since=now)
        self._alive(record, msg.boot_id, now)
        record.events_total += 1
        record.last_event = LastEvent(msg.code, msg.severity, msg.action, msg.gpu_index, now)
        if msg.kind is not EventKind.HEALTH_CHANGE and msg.severity is not Severity.OK:
            record.seen_findings = after_event(
                record.seen_findings, code=msg.code, gpu_index=msg.gpu_index,
                check=msg.kind.value, severity=msg.severity, action=msg.action,
                message=msg.message, now=now,
            )
        if (
            msg.kind is not EventKind.HEALTH_CHANGE
            and msg.severity is Severity.CRITICAL
            and msg.boot_id == record.boot_id
            and msg.ts >= record.last_state_ts
        ):
            # Faults are sent at once, the state that reflects them a moment later: act on
            # the fault now. The next state report is the agent's full word and replaces it.
            # An event older than the latest report (a resend the agent kept until it was
            # acknowledged) is history: that report already says what it meant.
            record.health = worst_health((record.health, Health.UNHEALTHY))
            record.action = strongest_action((record.action, msg.action))
            record.healthy_since = None
        return True

    # -- coordinator and operator ----------------------------------------------------

    def apply_transition(self, transition: Transition, now: float) -> None:
        """Record a transition the coordinator carried out (or decided, in dry-run)."""
        record = self._nodes[transition.node]
        target = transition.target
        record.lifecycle = target
        record.lifecycle_since = now
        record.reason = transition.reason.value
        record.message = transition.message
        if target in IN_SERVICE:
            record.out_boot_id = None
        elif target is not Lifecycle.RECOVERING:
            record.out_boot_id = record.boot_id
        if target in REBOOT_CLASS:
            record.last_reboot_remediation_at = now
            record.reboot_remediation_boot_id = record.boot_id
        if transition.reason is Reason.OPERATOR_CLEAR:
            # the operator vouches for the machine (it may be new hardware under an old name)
            record.clear_requested = False
            record.hold = False
            record.last_reboot_remediation_at = None
            record.reboot_remediation_boot_id = None

    def hold(self, name: str) -> bool:
        """Operator hold: the node stays out of service until cleared."""
        record = self._nodes.get(name)
        if record is None:
            return False
        record.hold = True
        return True

    def clear(self, name: str) -> bool:
        """Operator clear: return the node to service (and release a hold) on the next
        decision, without waiting for a new boot."""
        record = self._nodes.get(name)
        if record is None:
            return False
        record.clear_requested = True
        record.hold = False
        return True

    def note_facts(self, facts: NodeFacts) -> bool:
        """Take the node's instance type from the cluster's labels, and the GPUs its
        scheduler configures (a GPU the agent does not report then counts as unhealthy)."""
        record = self._nodes.get(facts.name)
        if record is None:
            return False
        record.label_instance_type = facts.instance_type
        record.cluster_gpus = facts.gpus
        self._count_gpus(record)
        return True

    def restore(
        self,
        name: str,
        lifecycle: Lifecycle,
        since: float,
        *,
        out_boot_id: str | None = None,
        last_reboot_remediation_at: float | None = None,
        reboot_remediation_boot_id: str | None = None,
        hold: bool = False,
    ) -> NodeRecord:
        """Rebuild a node's lifecycle after a coordinator restart (from the audit log and the
        cluster's marks). With ``out_boot_id`` unknown, an out-of-service node needs a boot
        after the first one it reports: the safe side."""
        record = self._nodes.get(name)
        if record is None:
            record = self._nodes[name] = NodeRecord(name, last_seen=since)
        record.lifecycle = lifecycle
        record.lifecycle_since = since
        record.reason = "restored"
        record.out_boot_id = out_boot_id if lifecycle in OUT_OF_SERVICE else None
        record.last_reboot_remediation_at = last_reboot_remediation_at
        record.reboot_remediation_boot_id = reboot_remediation_boot_id
        record.hold = hold
        return record

    def forget(self, name: str) -> bool:
        """Drop a node that left the cluster, so its silence stops counting."""
        return self._nodes.pop(name, None) is not None

    # -- reading -----------------------------------------------------------------------

    def node(self, name: str) -> NodeRecord | None:
        return self._nodes.get(name)

    def nodes(self) -> Iterator[NodeRecord]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def counts(self, record: NodeRecord) -> bool:
        """A member: counted in capacity and the safety rules, and acted on."""
        if self.members is not None and record.name not in self.members:
            return False
        return record.last_state_at > 0 or record.lifecycle in OUT_OF_SERVICE

    def counted(self) -> Iterator[NodeRecord]:
        return (r for r in self._nodes.values() if self.counts(r))

    def counted_total(self) -> int:
        """Members: the fleet size the safety rules take shares of."""
        return sum(1 for _ in self.counted())

    def nodes_out(self) -> int:
        """Nodes out of service now: what ``--max-unhealthy`` counts."""
        return sum(1 for r in self.counted() if r.lifecycle in OUT_OF_SERVICE)

    def silent_in_service(self, now: float, config: LifecycleConfig) -> int:
        """In-service nodes whose agent is silent: the safety gate's mass-silence input."""
        return sum(
            1
            for r in self.counted()
            if r.lifecycle in IN_SERVICE and is_silent(r, now, config)
        )

    def sweep_strangers(self, now: float, grace_s: float, keep: int = 10_000) -> list[str]:
        """Forget non-members silent for longer than ``grace_s``, and the least recently heard
        beyond ``keep`` of them; returns their names."""
        strangers = [r for r in self._nodes.values()
                     if not self.counts(r) and r.lifecycle in IN_SERVICE]  # fmt: skip
        gone = [r.name for r in strangers if now - r.last_seen > grace_s]
        alive = sorted((r for r in strangers if now - r.last_seen <= grace_s),
                       key=lambda r: r.last_seen)  # fmt: skip
        gone += [r.name for r in alive[: max(0, len(alive) - keep)]]
        for name in gone:
            del self._nodes[name]
        return gone

    def capacity(self) -> Capacity:
        cluster = _Tally()
        by_type: dict[str, _Tally] = {}
        by_state = dict.fromkeys(Lifecycle, 0)
        for record in self.counted():
            cluster.add(record)
            tally = by_type.get(record.instance_type)
            if tally is None:
                tally = by_type[record.instance_type] = _Tally()
            tally.add(record)
            by_state[record.lifecycle] += 1
        return Capacity(
            cluster=cluster.frozen(),
            by_instance_type=MappingProxyType({k: t.frozen() for k, t in by_type.items()}),
            nodes_by_lifecycle=MappingProxyType(by_state),
        )

    def healthy_gpus_by_node(self) -> dict[str, int]:
        """Schedulable healthy GPUs per node (0 for a node out of service): what task
        governance may place work on."""
        return {r.name: r.gpus_healthy for r in self.counted()}

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _alive(record: NodeRecord, boot_id: str, now: float) -> None:
        record.agent_online = True
        record.agent_boot_id = boot_id
        record.offline_since = None
        record.last_seen = now

    @staticmethod
    def _count_gpus(record: NodeRecord) -> None:
        reported = len(record.gpus)
        record.gpus_total = max(reported, record.gpus_expected or 0, record.cluster_gpus or 0)
        record.gpus_serviceable = sum(1 for g in record.gpus if g.serviceable)
