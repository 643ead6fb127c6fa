"""The coordinator process: ingest -> model -> remediation, plus the API, feed and alerts.

``Coordinator`` is the ingest sink and the API backend at once, so the one model has one
owner. Everything runs on one event loop; blocking work (SQLite, Kubernetes) goes to threads
inside the pieces that do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry

from coordinator.actuators import Actuator, NodeCatalog, NodeFacts
from coordinator.alerts import Alert, AlertSender
from coordinator.api import Json, UnknownNode
from coordinator.audit import AuditLog
from coordinator.broker_probe import accepts_anonymous
from coordinator.definitions import terms_json
from coordinator.feed import HealthFeed, verdict_of
from coordinator.ingest import BootConflict, IngestGate, Ingestor
from coordinator.inventory import NodeInventory
from coordinator.lifecycle import FAULT_STATES, LifecycleConfig, Transition
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import ClusterModel, NodeRecord
from coordinator.node_story import findings_json, history_json, marks_json
from coordinator.remediator import RemediationConfig, Remediator
from coordinator.safety import SafetyGate
from coordinator.settings import CoordinatorSettings
from coordinator.task_governance import TaskGovernance
from gpuwarden_common import logs
from gpuwarden_common.aio import raise_if_cancelled
from gpuwarden_common.backoff import backoff_delay
from gpuwarden_common.health import Severity
from gpuwarden_common.wire import (
    ClusterHealthMessage,
    EventKind,
    EventMessage,
    NodeVerdictMessage,
    StateMessage,
    StatusMessage,
)

log = structlog.get_logger("coordinator")


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """Without Kubernetes there is no Lease: one coordinator per cluster, by deployment."""

    is_leader = True


class Coordinator:
    def __init__(
        self,
        settings: CoordinatorSettings,
        *,
        actuator: Actuator,
        audit: AuditLog,
        registry: CollectorRegistry | None = None,
        leadership: Leadership | None = None,
        governance: TaskGovernance | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.actuator = actuator
        self.audit_log = audit
        self.leadership: Leadership = leadership or AlwaysLeader()
        self.governance = governance
        self.clock = clock
        self.model = ClusterModel(max_report_gap_s=settings.offline_grace_s)
        self.metrics = CoordinatorMetrics(self.registry)
        self.alerts = AlertSender(
            settings.alert_webhook, settings.alert_shape,  # type: ignore[arg-type]
            registry=self.registry,
        )
        self.gate = IngestGate(settings.cluster, self.registry,
                               max_clock_skew_s=settings.max_clock_skew_s)  # fmt: skip
        self.ingestor = Ingestor(
            settings.broker, settings.cluster, self, self.gate,
            client_id=f"gpuwarden-coordinator-{settings.identity}",
            should_ack=lambda: self._acting,
            # the feed needs the ingestor to publish, so it is built after: late-bound
            on_connected=lambda: self.feed.republish_all(),  # noqa: PLW0108
            on_conflict=self._boot_conflict,
            on_feed=lambda topic, payload: self.feed.heard(topic, payload),  # noqa: PLW0108
        )
        self.lifecycle = LifecycleConfig(
            offline_grace_s=settings.offline_grace_s,
            recovery_stable_s=settings.recovery_stable_s,
        )
        self._acting = False
        self._leading = asyncio.Event()
        self._standing_by = asyncio.Event()
        self.remediator = Remediator(
            self.model, actuator, audit,
            SafetyGate(settings.max_unhealthy, settings.max_remediations_per_minute),
            self.alerts, self.metrics,
            RemediationConfig(actor=settings.identity, lifecycle=self.lifecycle,
                              dry_run=settings.dry_run),
            is_leader=lambda: self._acting,
            on_transition=self._transitioned,
            on_node_changed=self._node_changed,
            clock=clock,
        )
        self.inventory = NodeInventory(self._list_nodes, self._members_changed)
        self.feed = HealthFeed(
            settings.cluster, self.model, self.ingestor.publish_retained, self.cluster_health,
            self.registry, is_acting=lambda: self._acting, on_round=self._feed_round,
            refresh_s=settings.feed_refresh_s, clock=clock,
        )  # fmt: skip
        self.started_at = clock()
        # the cluster's latest word on each node, for nodes whose agents report after it
        self._catalog: dict[str, NodeFacts] = {}

    # --- ingest sink ----------------------------------------------------------------------
    def on_status(self, msg: StatusMessage) -> None:
        if self.model.apply_status(msg, self.clock()):
            self.remediator.poke(msg.node)

    def on_state(self, msg: StateMessage) -> None:
        self.inventory.unknown(msg.node)  # a node the cluster's list does not name: read again
        record = self.model.node(msg.node)
        before = None if record is None else _verdict_key(record)
        if self.model.apply_state(msg, self.clock()):
            record = self.model.node(msg.node)
            known = self._catalog.get(msg.node)
            if record is not None and record.cluster_gpus is None and known is not None:
                self.model.note_facts(known)  # its first report since the cluster was read
            if record is not None and _verdict_key(record) != before:
                self.feed.changed(msg.node)  # a new node, or news in its verdict
            self.remediator.poke(msg.node)

    def on_event(self, msg: EventMessage) -> None:
        # a GPU back to health is news (info), not a fault
        what = "GPU health changed" if msg.kind is EventKind.HEALTH_CHANGE else "fault event"
        log.log(logs.level_of(msg.severity), what, node=msg.node, code=msg.code,
                gpu=msg.gpu_index, kind=msg.kind.value, message=msg.message,
                event_id=msg.event_id)  # fmt: skip
        if self.model.apply_event(msg, self.clock()):
            self.remediator.poke(msg.node)

    def _boot_conflict(self, conflict: BootConflict) -> None:
        log.error("two boots talk as one node: a forger or a cloned machine; the live one is "
                  "not ignored", node=conflict.node, boot=conflict.live_boot,
                  other_boot=conflict.other_boot)  # fmt: skip
        self.alerts.send(Alert(
            key=f"boot-conflict/{conflict.node}", severity=Severity.WARNING,
            summary=f"{conflict.node}: two boots publish as this node",
            description=f"boots {conflict.live_boot} and {conflict.other_boot} both talk; "
            "check the broker's ACL (a forger) or the machine (a clone)",
            labels={"node": conflict.node},
        ))  # fmt: skip

    # --- feed -------------------------------------------------------------------------------
    def _node_changed(self, record: NodeRecord) -> None:
        self.feed.changed(record.name)

    async def _transitioned(self, t: Transition, record: NodeRecord) -> None:
        if self.governance is None:
            return
        self.governance.set_capacity(self.model.healthy_gpus_by_node())
        if t.removes_from_service or (t.target in FAULT_STATES and t.source != t.target):
            await self.governance.on_node_out(t.node, t.message)

    def verdict_of(self, record: NodeRecord) -> NodeVerdictMessage:
        return verdict_of(record, self.settings.cluster, self.clock())

    def cluster_health(self) -> ClusterHealthMessage:
        cap = self.model.capacity()
        pause = self.remediator.gate.paused
        return ClusterHealthMessage(
            cluster=self.settings.cluster, ts=self.clock(),
            nodes_total=self.model.counted_total(),
            nodes_by_lifecycle={k.value: v for k, v in cap.nodes_by_lifecycle.items()},
            gpus_total=cap.cluster.total, gpus_healthy=cap.cluster.healthy,
            gpus_unhealthy=cap.cluster.unhealthy,
            gpus_pending_recovery=cap.cluster.pending_recovery,
            remediation_paused=pause is not None,
            paused_reason=pause.message if pause is not None else "",
        )

    async def _list_nodes(self) -> frozenset[str] | None:
        """The cluster's node list. A back end with a catalog (Slurm) says more in the same
        read: the GPUs its scheduler configures on each node feed the model's capacity."""
        if not isinstance(self.actuator, NodeCatalog):
            return await self.actuator.list_nodes()
        facts = await self.actuator.list_node_facts()
        if facts is None:
            return None
        self._catalog = {node.name: node for node in facts}
        for node in facts:
            record = self.model.node(node.name)
            before = None if record is None else record.gpus_total
            if self.model.note_facts(node) and record is not None and record.gpus_total != before:
                self.feed.changed(node.name)
        return frozenset(node.name for node in facts)

    def _members_changed(self, members: frozenset[str] | None) -> None:
        self.model.members = members
        log.info("cluster node list read", nodes=None if members is None else len(members))

    def _feed_round(self) -> None:
        """Every feed round (5 s): forget silent strangers, capacity metrics, and
        governance's view of capacity."""
        for name in self.model.sweep_strangers(self.clock(), self.settings.offline_grace_s):
            self.gate.forget_node(name)
        self.metrics.observe_capacity(self.model.capacity())
        if self.governance is not None and self._acting:
            # nodes that join healthy make no transition: capacity flows from here too
            self.governance.set_capacity(self.model.healthy_gpus_by_node())

    # --- leadership -------------------------------------------------------------------------
    async def _follow_leadership(self) -> None:
        """Act only while leading; on gaining the lease, rebuild from the audit log and the
        cluster first, so nothing is done twice and nothing half-done is left so."""
        failures = 0
        while True:
            raise_if_cancelled()
            leading = self.leadership.is_leader
            if leading and not self._acting:
                try:
                    await self.remediator.restore()
                except Exception as exc:  # the cluster's API is down: not acting yet is safe
                    log.error("cannot rebuild state from the cluster; retrying before acting",
                              error=str(exc))  # fmt: skip
                    failures += 1
                    await asyncio.sleep(backoff_delay(failures, 0.5, 30.0))
                    continue
                failures = 0
                self._acting = True
                self._standing_by.clear()
                self._leading.set()
                self.metrics.leader.set(1)
                log.info("leading: acting on the fleet", identity=self.settings.identity)
                self.feed.republish_all()
            elif not leading and self._acting:
                self._acting = False
                self._leading.clear()
                self._standing_by.set()
                self.metrics.leader.set(0)
                log.warning("lost leadership: standing by", identity=self.settings.identity)
            await asyncio.sleep(0.2)

    @property
    def acting(self) -> bool:
        return self._acting

    async def run(self) -> None:
        """Run until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.ingestor.run(), name="ingest")
            tg.create_task(self.alerts.run(), name="alerts")
            tg.create_task(self._follow_leadership(), name="leadership")
            tg.create_task(self.remediator.run(), name="remediation")
            tg.create_task(self.feed.run(), name="feed")
            tg.create_task(self.inventory.run(), name="inventory")
            tg.create_task(self._probe_broker(), name="broker-probe")
            if self.governance is not None:
                tg.create_task(self._govern(), name="governance")

    async def _probe_broker(self) -> None:
        await self.ingestor.wait_connected()
        anonymous = await accepts_anonymous(self.settings.broker)
        if anonymous is None:
            return
        self.metrics.broker_anonymous.set(1 if anonymous else 0)
        if anonymous:
            log.error(
                "the broker accepts clients without credentials: anyone who can reach it can "
                "forge node state, acknowledgements and verdicts; give agents client "
                "certificates and the ACL (deploy/kubernetes/mosquitto/, docs/operations.md)",
                broker=self.settings.broker.display,
            )
            self.alerts.send(Alert(
                key="broker-anonymous", severity=Severity.WARNING,
                summary="the MQTT broker accepts anonymous clients",
                description=f"{self.settings.broker.display} let a client in with no "
                "credentials: node state can be forged",
            ))  # fmt: skip

    async def _govern(self) -> None:
        """Task governance acts only while this replica leads, on the model's capacity."""
        governance = self.governance
        assert governance is not None
        while True:
            raise_if_cancelled()
            await self._leading.wait()
            governance.set_capacity(self.model.healthy_gpus_by_node())
            task = asyncio.create_task(governance.run(), name="governance-run")
            await self._standing_by.wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- API backend ----------------------------------------------------------------------
    def health(self) -> tuple[bool, Json]:
        stats = self.ingestor.stats()
        return True, {
            "status": "ok", "leader": self._acting, "broker_connected": stats.connected,
            "dry_run": self.settings.dry_run, "nodes": self.model.counted_total(),
            "uptime_s": round(self.clock() - self.started_at, 1),
        }

    def cluster(self) -> Json:
        health = self.cluster_health()
        cap = self.model.capacity()
        stats = self.ingestor.stats()
        return {
            "cluster": self.settings.cluster,
            "nodes_total": health.nodes_total,
            "nodes_by_lifecycle": health.nodes_by_lifecycle,
            "capacity": {
                "gpus_total": cap.cluster.total, "gpus_healthy": cap.cluster.healthy,
                "gpus_unhealthy": cap.cluster.unhealthy,
                "gpus_pending_recovery": cap.cluster.pending_recovery,
            },
            "by_instance_type": {
                itype: {"nodes": c.nodes, "gpus_total": c.total, "gpus_healthy": c.healthy,
                        "gpus_unhealthy": c.unhealthy, "gpus_pending_recovery": c.pending_recovery}
                for itype, c in sorted(cap.by_instance_type.items())
            },
            # what each number counts, for tooltips and readers of the JSON
            "definitions": terms_json(),
            "utilization_pct": self._utilization(),
            "remediation_paused": health.remediation_paused,
            "paused_reason": health.paused_reason,
            "leader": self._acting,
            "dry_run": self.settings.dry_run,
            "ingest": {
                "connected": stats.connected, "accepted": stats.accepted,
                "rejected": stats.rejected, "accepted_per_s": round(stats.accepted_per_s, 1),
            },
            "ts": self.clock(),
        }

    def _utilization(self) -> float | None:
        values = [g.utilization_pct for r in self.model.nodes() for g in r.gpus
                  if g.utilization_pct is not None]
        return round(sum(values) / len(values), 1) if values else None

    def _node_json(self, r: NodeRecord) -> Json:
        return {
            "name": r.name, "lifecycle": r.lifecycle.value, "since": r.lifecycle_since,
            "health": r.health.value, "action": r.action.value,
            "reason": r.message or r.reason, "schedulable": r.in_service,
            "gpus_total": r.gpus_total, "gpus_healthy": r.gpus_healthy,
            "instance_type": r.instance_type, "agent": "online" if r.agent_online else "offline",
            "last_seen": r.last_seen, "boot_id": r.boot_id, "hold": r.hold,
            # false: the cluster does not know it, or it never sent a full report; it is
            # neither counted nor acted on
            "member": self.model.counts(r),
        }

    def nodes(self) -> list[Json]:
        return [self._node_json(r) for r in sorted(self.model.nodes(), key=lambda r: r.name)]

    def node(self, name: str) -> Json | None:
        r = self.model.node(name)
        if r is None:
            return None
        body = self._node_json(r)
        body["gpus"] = [
            {"index": g.index, "uuid": g.uuid, "health": g.health.value, "action": g.action.value,
             "lost": g.lost, "utilization_pct": g.utilization_pct,
             "memory_used_bytes": g.memory_used_bytes, "memory_total_bytes": g.memory_total_bytes,
             "processes": g.process_count}
            for g in r.gpus
        ]
        body["findings"] = findings_json(r.seen_findings)
        # the newest entries hold the story; task records and successful actions are skipped
        body["history"] = history_json(self.audit_log.query(node=name, limit=500))
        body["last_event"] = None if r.last_event is None else {
            "code": r.last_event.code, "severity": r.last_event.severity.value,
            "action": r.last_event.action.value, "gpu_index": r.last_event.gpu_index,
            "at": r.last_event.at,
        }
        body["driver_version"] = r.driver_version
        return body

    async def marks(self, name: str) -> Json | None:
        record = self.model.node(name)
        if record is None:
            return None
        try:
            facts = await self.actuator.node_facts(name)
        except Exception as exc:  # the cluster's API is down: say so, the rest still reads
            return {"actuator": self.actuator.name, "error": f"{type(exc).__name__}: {exc}"}
        return marks_json(facts, record.lifecycle, self.actuator.name)

    def audit(self, since: float | None, node: str | None, limit: int) -> list[Json]:
        return [
            {"id": e.id, "ts": e.ts, "kind": e.kind.value, "actor": e.actor, "node": e.node,
             "task": e.task, "team": e.team, "action": e.action, "reason": e.reason,
             "details": dict(e.details), "outcome": e.outcome, "dry_run": e.dry_run,
             "started_id": e.started_id}
            for e in self.audit_log.query(since=since, node=node, limit=limit)
        ]

    def teams(self) -> list[Json]:
        return self.governance.teams() if self.governance else []

    def unassigned(self) -> Json | None:
        return self.governance.unassigned() if self.governance else None

    def tasks(self) -> list[Json]:
        return self.governance.tasks() if self.governance else []

    def priority_classes(self) -> list[Json]:
        return self.governance.priority_classes() if self.governance else []

    async def clear(self, node: str, actor: str, reason: str) -> Json:
        return await self._operator("clear", node, actor, reason)

    async def hold(self, node: str, actor: str, reason: str) -> Json:
        return await self._operator("hold", node, actor, reason)

    async def _operator(self, verb: str, node: str, actor: str, reason: str) -> Json:
        if not await self.remediator.operator(verb, node, actor, reason):
            raise UnknownNode(node)
        log.warning("operator action", verb=verb, node=node, actor=actor, reason=reason)
        return {"node": node, "accepted": verb, "note": "applied on the next decision"}


def _verdict_key(record: NodeRecord) -> tuple[object, ...]:
    """What a node's verdict says besides the lifecycle (whose changes publish it anyway)."""
    return (record.health, record.action, record.gpus_total, record.gpus_healthy)
