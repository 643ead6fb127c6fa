"""Turns the model into actions on machines, safely.

For every node it is told about (``poke``) and, once a tick, for all of them, it asks the pure
lifecycle policy for a transition, passes new removals through the safety gate, records the
decision once and applies it to the model. Bringing the cluster into line is separate work
(:mod:`coordinator.convergence`): each attempt is an action audited before and after, a
failed one is retried with backoff counted from its failure, and the work outlives
restarts and failovers, which rebuild it (:mod:`coordinator.restore`) for every node held out
of service. Only the leader acts; ``--dry-run`` decides and audits and calls no actuator.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from coordinator.actuators import ActionResult, Actuator, MarkFact, NodeFacts, NodeMark
from coordinator.alerts import Alert, AlertSender
from coordinator.audit import AuditEntry, AuditKind, AuditLog, AuditRecord
from coordinator.convergence import MarkQueue, MarkWork
from coordinator.fault_names import fault_of
from coordinator.lifecycle import (
    OUT_OF_SERVICE,
    Lifecycle,
    LifecycleConfig,
    Reason,
    Transition,
    decide,
    is_silent,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.model import ClusterModel, NodeRecord
from coordinator.restore import is_lifecycle_decision, plan_restore
from coordinator.safety import Deny, SafetyGate
from gpuwarden_common.aio import raise_if_cancelled, wait_event
from gpuwarden_common.health import Severity

log = structlog.get_logger("coordinator.remediator")

TransitionHook = Callable[[Transition, NodeRecord], Awaitable[None]]

# transitions that keep a node marked without a new fault (it rebooted, or an operator holds it)
_NOT_A_FAULT = frozenset({Reason.NEW_BOOT, Reason.OPERATOR_HOLD})
# an attempt that fails this often pages someone: the node is taken out in the model, and
# may still be getting work on the cluster
ALERT_AFTER_ATTEMPTS = 3


@dataclass(frozen=True)
class RemediationConfig:
    actor: str
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    dry_run: bool = False
    tick_s: float = 1.0
    retry_after_s: float = 5.0
    retry_max_s: float = 300.0


class Remediator:
    def __init__(
        self,
        model: ClusterModel,
        actuator: Actuator,
        audit: AuditLog,
        gate: SafetyGate,
        alerts: AlertSender,
        metrics: CoordinatorMetrics,
        config: RemediationConfig,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        on_transition: TransitionHook | None = None,
        on_node_changed: Callable[[NodeRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.model = model
        self.actuator = actuator
        self.audit = audit
        self.gate = gate
        self.alerts = alerts
        self.metrics = metrics
        self.config = config
        self._is_leader = is_leader
        self._on_transition = on_transition
        self._on_node_changed = on_node_changed or (lambda _r: None)
        self._clock = clock
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._facts: dict[str, NodeFacts] = {}
        self.marks = MarkQueue(config.retry_after_s, config.retry_max_s)
        # tells this process's actions from those of an earlier run in the audit log: only
        # those can have been cut off by a restart
        self.run_id = uuid.uuid4().hex[:12]

    @property
    def paused(self) -> bool:
        return self.gate.paused is not None

    def poke(self, node: str) -> None:
        """Something changed on ``node``: decide about it soon (not on the caller's stack)."""
        self._dirty.add(node)
        self._wake.set()

    # --- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        next_tick = 0.0
        while True:
            raise_if_cancelled()
            now = self._clock()
            if now >= next_tick:
                self._dirty.update(r.name for r in self.model.counted())
                next_tick = now + self.config.tick_s
                self._review_pause(now)
            if self._is_leader():
                batch, self._dirty = self._dirty, set()
                for name in sorted(batch):
                    try:
                        await self.evaluate(name)
                    except Exception:  # one node's trouble must not stop the others
                        log.exception("evaluation failed", node=name)
                for work in self.marks.due(self._clock()):
                    if not self._is_leader():
                        break
                    await self.converge(work.node)
            self.metrics.marks_pending.set(len(self.marks))
            self._wake.clear()
            # a cancel must never be lost (gpuwarden_common.aio)
            await wait_event(self._wake, max(0.01, next_tick - self._clock()))

    async def evaluate(self, name: str) -> Transition | None:
        record = self.model.node(name)
        if record is None or not self.model.counts(record):
            return None  # a stranger: an invented name, or a node the cluster does not know
        now = self._clock()
        facts = self._facts.get(name)
        if record.lifecycle is Lifecycle.SUSPECT and is_silent(record, now, self.config.lifecycle):
            # only now is the cluster's own word (Ready) worth an API call
            facts = await self.actuator.node_facts(name)
            self._facts[name] = facts
            if not facts.exists:
                log.info("node left the cluster; forgetting it", node=name)
                self.model.forget(name)
                return None
        transition = decide(record, facts, now, self.config.lifecycle)
        if transition is None:
            return None
        if transition.mark is None:  # suspect and back: the coordinator's own doubt
            await self._audit(AuditEntry(
                kind=AuditKind.DECISION, actor=self.config.actor, node=name,
                action=transition.target.value,
                reason=f"{transition.reason.value}: {transition.message}",
                details={"source": transition.source.value, "target": transition.target.value,
                         "mark": None, "boot_id": record.boot_id},
                dry_run=self.config.dry_run,
            ))
            self._apply(transition, record, now)
            return transition
        verdict = self.gate.admit(
            transition, self.model.nodes_out(), self.model.counted_total(), now,
            silent_nodes=self.model.silent_in_service(now, self.config.lifecycle),
        )
        if isinstance(verdict, Deny):
            self.metrics.denied.labels(verdict.reason.value).inc()
            if verdict.new_pause:
                await self._pause_alert(verdict, now)
            return None
        return await self._carry_out(transition, record, now)

    async def _carry_out(self, t: Transition, record: NodeRecord, now: float) -> Transition:
        """Decide once: record the decision, apply it to the model, then bring the cluster
        into line (now, and again later for as long as that fails)."""
        assert t.mark is not None
        fact = MarkFact(reason=_fact_reason(t), message=t.message, at=now,
                        fault=fault_of(t, record))  # fmt: skip
        details: dict[str, Any] = {
            "source": t.source.value, "target": t.target.value,
            "mark": t.mark.value, "boot_id": record.boot_id,
            "health": record.health.value, "agent_action": record.action.value,
            "findings": [f"{f.code}@{f.gpu_index}" for f in record.findings][:20],
            "fact_id": fact.id, "fact_reason": fact.reason, "message": t.message,
            "fault": fact.fault,
        }
        dry = self.config.dry_run
        decision_id = await self._audit(AuditEntry(
            kind=AuditKind.DECISION, actor=self.config.actor, node=t.node, action=t.target.value,
            reason=f"{t.reason.value}: {t.message}", details=details, dry_run=dry, ts=now,
        ))
        log.warning("node transition", node=t.node, source=t.source.value,
                    target=t.target.value, reason=t.reason.value, message=t.message,
                    dry_run=dry)
        self._apply(t, record, now)
        if t.removes_from_service:
            self.alerts.send(Alert(
                key=f"node-out/{t.node}", severity=Severity.CRITICAL,
                summary=f"{t.node}: {t.target.value}", description=t.message,
                labels={"node": t.node, "reason": t.reason.value},
            ))
        elif t.returns_to_service:
            self.alerts.send(Alert(
                key=f"node-out/{t.node}", severity=Severity.OK,
                summary=f"{t.node}: back in service", description=t.message,
                labels={"node": t.node, "reason": t.reason.value}, resolved=True,
            ))
        if not dry:
            self.marks.want(MarkWork(t.node, t.mark, fact, decision_id))
            await self.converge(t.node)
        if self._on_transition is not None:
            await self._on_transition(t, record)
        return t

    # --- convergence ----------------------------------------------------------------------
    async def converge(self, node: str) -> bool:
        """One attempt at the node's wanted marks, unless one is running already (from
        before a leadership change, say) or none is wanted. True when it succeeded."""
        work = self.marks.get(node)
        if work is None or not self.marks.start(work):
            return False
        try:
            result = await self._attempt(work)
        except BaseException:
            self.marks.abandon(work)
            raise
        retry_at = self.marks.finish(work, ok=result.ok, now=self._clock(), detail=result.detail)
        if retry_at is not None:
            log.error("marks not applied; will retry", node=node, mark=work.mark.value,
                      attempts=work.attempts, retry_in_s=round(retry_at - self._clock(), 1),
                      detail=result.detail)  # fmt: skip
            if work.attempts == ALERT_AFTER_ATTEMPTS:
                self.alerts.send(Alert(
                    key=f"marks-failing/{node}", severity=Severity.CRITICAL,
                    summary=f"{node}: cannot apply {work.mark.value}",
                    description=f"{work.attempts} attempts failed; last: {result.detail}",
                    labels={"node": node, "mark": work.mark.value},
                ))
        elif result.ok and work.attempts >= ALERT_AFTER_ATTEMPTS:
            self.alerts.send(Alert(
                key=f"marks-failing/{node}", severity=Severity.OK,
                summary=f"{node}: {work.mark.value} applied", resolved=True,
                labels={"node": node, "mark": work.mark.value},
            ))
        return result.ok

    async def _attempt(self, work: MarkWork) -> ActionResult:
        action = "mark_healthy" if work.mark is NodeMark.SCHEDULABLE else "mark_unhealthy"
        replay = work.resume
        started = replay.id if replay is not None else await self._audit(AuditEntry(
            kind=AuditKind.ACTION_STARTED, actor=self.config.actor, node=work.node,
            action=action, reason=work.fact.reason,
            details={"mark": work.mark.value, "fact_id": work.fact.id,
                     "fact_reason": work.fact.reason, "message": work.fact.message,
                     "decision_id": work.decision_id, "attempt": work.attempts + 1,
                     "run_id": self.run_id},
        ))  # fmt: skip
        began = time.perf_counter()
        try:
            if work.mark is NodeMark.SCHEDULABLE:
                result = await self.actuator.mark_healthy(work.node, work.fact)
            else:
                result = await self.actuator.mark_unhealthy(work.node, work.mark, work.fact)
        except Exception as exc:  # the actuator's own retries are spent
            result = ActionResult(ok=False, changed=False, detail=f"{type(exc).__name__}: {exc}")
        self.metrics.action_latency.labels(action).observe(time.perf_counter() - began)
        outcome = "ok" if result.ok else "failed"
        self.metrics.actions.labels(action, outcome).inc()
        reason = f"replayed after restart: {result.detail}" if replay else result.detail
        await asyncio.to_thread(
            self.audit.finish, started, actor=self.config.actor, outcome=outcome,
            reason=reason, details={"changed": result.changed},
        )
        if replay is not None:
            log.info("finished an action cut off by a restart", node=work.node,
                     action=action, outcome=outcome)  # fmt: skip
        return result

    def _apply(self, t: Transition, record: NodeRecord, now: float) -> None:
        self.model.apply_transition(t, now)
        self.metrics.transitions.labels(t.source.value, t.target.value, t.reason.value).inc()
        self._on_node_changed(record)

    async def _audit(self, entry: AuditEntry) -> int:
        return await asyncio.to_thread(self.audit.record, entry)


    # --- safety alerts ----------------------------------------------------------------------
    async def _pause_alert(self, deny: Deny, now: float) -> None:
        self.metrics.paused.set(1)
        log.error("remediation paused", reason=deny.reason.value, message=deny.message)
        self.alerts.send(Alert(
            key="remediation-paused", severity=Severity.CRITICAL,
            summary=f"gpuwarden paused remediation: {deny.reason.value}",
            description=deny.message, labels={"reason": deny.reason.value},
        ))
        entry = AuditEntry(
            kind=AuditKind.ALERT, actor=self.config.actor, action="remediation-paused",
            reason=deny.message, ts=now,
        )
        await self._audit(entry)

    def _review_pause(self, now: float) -> None:
        ended = self.gate.review(
            self.model.nodes_out(), self.model.counted_total(), now,
            silent_nodes=self.model.silent_in_service(now, self.config.lifecycle),
        )
        if ended is None:
            return
        self.metrics.paused.set(0)
        log.info("remediation resumed", was=ended.reason.value)
        self.alerts.send(Alert(
            key="remediation-paused", severity=Severity.OK,
            summary="gpuwarden resumed remediation", description=ended.message, resolved=True,
        ))

    # --- restart and takeover ------------------------------------------------------------
    async def restore(self) -> int:
        """Rebuild lifecycles after a restart or on gaining the lead, from the audit log and
        the cluster's marks, and queue every node held out of service (or still marked
        though back in service) for reconciliation, finishing any action an earlier run
        started and never finished. Returns how many nodes were restored."""
        decisions = await asyncio.to_thread(
            self.audit.query, kind=AuditKind.DECISION, limit=10_000
        )
        latest: dict[str, AuditRecord] = {}
        for rec in decisions:  # newest first
            if is_lifecycle_decision(rec) and rec.node not in latest:
                latest[str(rec.node)] = rec
        cluster = {f.name: f for f in await self.actuator.list_marked()}
        for name, rec in sorted(latest.items()):
            # the log holds it out but the cluster shows no mark: the action failed, or
            # another leader has returned the node to service since; its annotation says which
            target = rec.details.get("target")
            if name not in cluster and target in {s.value for s in OUT_OF_SERVICE}:
                cluster[name] = await self.actuator.node_facts(name)
        restored = 0
        for item in plan_restore(latest, cluster, self._clock()):
            if item.lifecycle in OUT_OF_SERVICE:
                self.model.restore(item.node, item.lifecycle, item.since,
                                   out_boot_id=item.out_boot_id)  # fmt: skip
                restored += 1
            wanted = self.marks.get(item.node)
            if wanted is None or (wanted.mark, wanted.fact.id) != (item.mark, item.fact.id):
                self.marks.want(MarkWork(item.node, item.mark, item.fact, item.decision_id))
        for pending in await asyncio.to_thread(self.audit.pending_actions):
            if pending.details.get("run_id") != self.run_id:  # ours may still be running
                await self._adopt_cut_off(pending)
        log.info("restored lifecycles", nodes=restored, to_reconcile=len(self.marks))
        self.metrics.marks_pending.set(len(self.marks))
        return restored

    async def _adopt_cut_off(self, pending: AuditRecord) -> None:
        """An action an earlier run started and never finished: the next attempt at the same
        mark finishes its record (neither lost nor done twice); a later decision supersedes
        it."""
        work = None if pending.node is None else self.marks.get(pending.node)
        node = None if pending.node is None else self.model.node(pending.node)
        mark = pending.details.get("mark")
        if work is None and not pending.dry_run and mark == NodeMark.SCHEDULABLE.value and (
            node is None or node.in_service
        ):
            # a recovery cut off half-way: the cluster may still show part of the marks
            work = MarkWork(str(pending.node), NodeMark.SCHEDULABLE, _pending_fact(pending))
            self.marks.want(work)
        same_fact = work is not None and pending.details.get("fact_id") in (None, work.fact.id)
        if (work is not None and not pending.dry_run and work.resume is None
                and work.mark.value == mark and same_fact):
            work.resume = pending
            return
        await asyncio.to_thread(
            self.audit.finish, pending, actor=self.config.actor,
            outcome="abandoned" if pending.dry_run else "superseded",
            reason="started before a restart; "
            + ("nothing to redo" if pending.dry_run else "a later decision replaces it"),
        )

    # --- operators --------------------------------------------------------------------------
    async def operator(self, verb: str, name: str, actor: str, reason: str) -> bool:
        ok = self.model.clear(name) if verb == "clear" else self.model.hold(name)
        if ok:
            await self._audit(AuditEntry(
                kind=AuditKind.OPERATOR, actor=actor, node=name, action=verb, reason=reason,
            ))
            self.poke(name)
        return ok


def _fact_reason(t: Transition) -> str:
    """The Event and condition reason of a transition's fact."""
    assert t.mark is not None
    if t.mark is NodeMark.SCHEDULABLE:
        return "NodeRecovered"
    fresh_fault = t.mark is NodeMark.UNSCHEDULABLE and t.reason not in _NOT_A_FAULT
    return "GPUFault" if fresh_fault else "NodeMarkedForRecovery"


def _pending_fact(pending: AuditRecord) -> MarkFact:
    d = pending.details
    return MarkFact(
        reason=str(d.get("fact_reason") or "NodeRecovered"),
        message=str(d.get("message") or "returned to service"),
        id=str(d.get("fact_id") or f"audit-{pending.id}"),
        at=pending.ts,
    )
