"""Turns the model into actions on machines, safely.

For every node it is told about (``poke``) and, once a tick, for all of them, it asks the pure
lifecycle policy for a transition, passes new removals through the safety gate, records the
decision, runs the actuator with the action audited before and after, and applies the result
to the model. Only the leader acts; ``--dry-run`` decides and audits and calls no actuator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from coordinator.actuators import ActionResult, Actuator, NodeFacts, NodeMark
from coordinator.alerts import Alert, AlertSender
from coordinator.audit import AuditEntry, AuditKind, AuditLog, AuditRecord
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
from coordinator.safety import Deny, SafetyGate
from gpuwarden_common.health import Severity

log = structlog.get_logger("coordinator.remediator")

TransitionHook = Callable[[Transition, NodeRecord], Awaitable[None]]

_MARK_LIFECYCLE = {
    NodeMark.UNSCHEDULABLE: Lifecycle.UNSCHEDULABLE,
    NodeMark.PENDING_REBOOT: Lifecycle.PENDING_REBOOT,
    NodeMark.PENDING_REPLACEMENT: Lifecycle.PENDING_REPLACEMENT,
}
# transitions that keep a node marked without a new fault (it rebooted, or an operator holds it)
_NOT_A_FAULT = frozenset({Reason.NEW_BOOT, Reason.OPERATOR_HOLD})
_EVENT_REASON = {
    Reason.RECOVERED: "NodeRecovered",
    Reason.OPERATOR_CLEAR: "NodeRecovered",
}


@dataclass(frozen=True)
class RemediationConfig:
    actor: str
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    dry_run: bool = False
    tick_s: float = 1.0
    retry_after_s: float = 5.0


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
        self._retry_at: dict[str, float] = {}
        self._facts: dict[str, NodeFacts] = {}

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
            now = self._clock()
            if now >= next_tick:
                self._dirty.update(r.name for r in self.model.nodes())
                next_tick = now + self.config.tick_s
                self._review_pause(now)
            if self._is_leader():
                batch, self._dirty = self._dirty, set()
                for name in sorted(batch):
                    try:
                        await self.evaluate(name)
                    except Exception:  # one node's trouble must not stop the others
                        log.exception("evaluation failed", node=name)
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as
            # the wake fires, and a coordinator told to stop would go on acting
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.01, next_tick - self._clock())):
                    await self._wake.wait()

    async def evaluate(self, name: str) -> Transition | None:
        record = self.model.node(name)
        if record is None:
            return None
        now = self._clock()
        if self._retry_at.get(name, 0.0) > now:
            return None
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
            transition, self.model.nodes_out(), len(self.model), now,
            silent_nodes=self.model.silent_in_service(now, self.config.lifecycle),
        )
        if isinstance(verdict, Deny):
            self.metrics.denied.labels(verdict.reason.value).inc()
            if verdict.new_pause:
                await self._pause_alert(verdict, now)
            return None
        return await self._carry_out(transition, record, now)

    async def _carry_out(self, t: Transition, record: NodeRecord, now: float) -> Transition | None:
        details: dict[str, Any] = {
            "source": t.source.value, "target": t.target.value,
            "mark": t.mark.value if t.mark else None, "boot_id": record.boot_id,
            "health": record.health.value, "agent_action": record.action.value,
            "findings": [f"{f.code}@{f.gpu_index}" for f in record.findings][:20],
        }
        dry = self.config.dry_run
        actor = self.config.actor
        await self._audit(AuditEntry(
            kind=AuditKind.DECISION, actor=actor, node=t.node, action=t.target.value,
            reason=f"{t.reason.value}: {t.message}", details=details, dry_run=dry,
        ))
        log.warning("node transition", node=t.node, source=t.source.value,
                    target=t.target.value, reason=t.reason.value, message=t.message,
                    dry_run=dry)
        if not dry:
            result = await self._act(t, details)
            if not result.ok:
                self._retry_at[t.node] = now + self.config.retry_after_s
                return None
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
        if self._on_transition is not None:
            await self._on_transition(t, record)
        return t

    async def _act(self, t: Transition, details: dict[str, Any]) -> ActionResult:
        assert t.mark is not None
        action = "mark_healthy" if t.mark is NodeMark.SCHEDULABLE else "mark_unhealthy"
        started = await self._audit(AuditEntry(
            kind=AuditKind.ACTION_STARTED, actor=self.config.actor, node=t.node, action=action,
            reason=t.reason.value, details=details,
        ))
        began = time.perf_counter()
        try:
            result = await self._call(action, t.node, t.mark, t.reason, t.message)
        except Exception as exc:  # the actuator's own retries are spent
            result = ActionResult(ok=False, changed=False, detail=f"{type(exc).__name__}: {exc}")
        self.metrics.action_latency.labels(action).observe(time.perf_counter() - began)
        outcome = "ok" if result.ok else "failed"
        self.metrics.actions.labels(action, outcome).inc()
        await asyncio.to_thread(
            self.audit.finish, started, actor=self.config.actor, outcome=outcome,
            reason=result.detail, details={"changed": result.changed},
        )
        if not result.ok:
            log.error("action failed; will retry", node=t.node, action=action,
                      detail=result.detail)
        return result

    async def _call(
        self, action: str, node: str, mark: NodeMark, reason: Reason, message: str
    ) -> ActionResult:
        if action == "mark_healthy":
            return await self.actuator.mark_healthy(
                node, _EVENT_REASON.get(reason, "NodeRecovered"), message
            )
        fresh_fault = mark is NodeMark.UNSCHEDULABLE and reason not in _NOT_A_FAULT
        event_reason = "GPUFault" if fresh_fault else "NodeMarkedForRecovery"
        return await self.actuator.mark_unhealthy(node, mark, event_reason, message)

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
            self.model.nodes_out(), len(self.model), now,
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

    # --- restart --------------------------------------------------------------------------
    async def restore(self) -> int:
        """Rebuild lifecycles after a restart, from the audit log and the cluster's marks,
        and finish actions a crash cut off. Returns how many nodes were restored."""
        decisions = await asyncio.to_thread(
            self.audit.query, kind=AuditKind.DECISION, limit=10_000
        )
        latest: dict[str, AuditRecord] = {}
        for rec in decisions:  # newest first
            lifecycle_decision = "target" in rec.details  # not a task or simulator record
            if rec.node and rec.node not in latest and not rec.dry_run and lifecycle_decision:
                latest[rec.node] = rec
        marked = {f.name: f for f in await self.actuator.list_marked()}
        restored = 0
        for name in sorted(set(latest) | set(marked)):
            last = latest.get(name)
            target: Lifecycle | None = None
            out_boot: str | None = None
            since = self._clock()
            if last is not None:
                target = Lifecycle(last.details.get("target", Lifecycle.HEALTHY.value))
                out_boot = last.details.get("boot_id")
                since = last.ts
            facts = marked.get(name)
            if target is None or (target not in OUT_OF_SERVICE and facts is not None
                                  and facts.mark in _MARK_LIFECYCLE):
                # the cluster shows a mark the log cannot explain: trust the cluster
                target = _MARK_LIFECYCLE.get(facts.mark) if facts and facts.mark else None
            if target is None or target not in OUT_OF_SERVICE:
                continue
            self.model.restore(name, target, since, out_boot_id=out_boot or None)
            restored += 1
        for pending in await asyncio.to_thread(self.audit.pending_actions):
            await self._finish_cut_off(pending)
        log.info("restored lifecycles", nodes=restored)
        return restored

    async def _finish_cut_off(self, pending: AuditRecord) -> None:
        """An action started before a crash: run it again (actuators are idempotent) and
        close its audit record, so it is neither lost nor done twice."""
        if pending.dry_run or pending.node is None:
            await asyncio.to_thread(
                self.audit.finish, pending, actor=self.config.actor, outcome="abandoned",
                reason="started before a restart; nothing to redo",
            )
            return
        mark: NodeMark | None = None
        reason: Reason | None = None
        try:
            mark = NodeMark(str(pending.details.get("mark")))
            reason = Reason(pending.reason)
        except ValueError:
            pass
        if mark is None or reason is None or self.config.dry_run:
            outcome, detail = "abandoned", "could not be replayed"
        else:
            result = await self._call(pending.action or "", pending.node, mark, reason,
                                      "completed after a coordinator restart")
            outcome, detail = ("ok" if result.ok else "failed"), result.detail
        await asyncio.to_thread(
            self.audit.finish, pending, actor=self.config.actor, outcome=outcome,
            reason=f"replayed after restart: {detail}",
        )
        log.info("finished an action cut off by a restart", node=pending.node,
                 action=pending.action, outcome=outcome)

    # --- operators --------------------------------------------------------------------------
    async def operator(self, verb: str, name: str, actor: str, reason: str) -> bool:
        ok = self.model.clear(name) if verb == "clear" else self.model.hold(name)
        if ok:
            await self._audit(AuditEntry(
                kind=AuditKind.OPERATOR, actor=actor, node=name, action=verb, reason=reason,
            ))
            self.poke(name)
        return ok
