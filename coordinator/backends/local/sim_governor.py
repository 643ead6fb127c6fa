"""Task governance on the built-in simulated cluster: the same engine, no Kubernetes.

The simulated cluster runs tasks on a virtual clock ``speed`` times faster than real time.
The coordinator tells it which nodes it took out (their tasks are requeued from their last
checkpoint) and, through ``set_capacity``, which came back.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.governance.policy import Policy
from coordinator.governance.simcluster import SimCluster, SimEvent
from coordinator.governance.workload import Workload
from coordinator.task_governance import (
    Json,
    classes_json,
    tasks_json,
    teams_json,
    unassigned_json,
)

# what reaches the audit log; arrivals, releases and finishes would drown it
_AUDITED = {"admit", "preempt", "requeue", "fail", "fault", "repair"}


@dataclass(frozen=True)
class SimLine:
    """A simulated-cluster event as the demo shows it: real time and simulated time."""

    at: float
    sim_s: float
    kind: str
    subject: str
    detail: str


class SimGovernor:
    def __init__(
        self,
        policy: Policy,
        workload: Workload,
        audit: AuditLog,
        actor: str,
        *,
        speed: float = 120.0,
        step_s: float = 0.25,
        clock: Callable[[], float] = time.time,
        on_line: Callable[[SimLine], None] | None = None,
    ) -> None:
        self.speed = speed
        self._audit = audit
        self._actor = actor
        self._step_s = step_s
        self._clock = clock
        self._on_line = on_line
        self._out: set[str] = set()
        self.recent: collections.deque[SimLine] = collections.deque(maxlen=200)
        self.counts: collections.Counter[str] = collections.Counter()
        self.sim = SimCluster(policy, workload, on_event=self._on_event)

    def _on_event(self, event: SimEvent) -> None:
        self.counts[event.kind] += 1
        line = SimLine(self._clock(), event.time, event.kind, event.subject, event.detail)
        self.recent.append(line)
        if self._on_line is not None:
            self._on_line(line)
        if event.kind in _AUDITED:
            task = None if event.kind in {"fault", "repair"} else event.subject
            self._audit.record(AuditEntry(
                kind=AuditKind.DECISION, actor=self._actor, task=task,
                node=event.subject if task is None else None,
                action=f"task-{event.kind}" if task else f"sim-node-{event.kind}",
                reason=event.detail, details={"sim_time_s": round(event.time, 1)},
            ))

    # --- TaskGovernance ----------------------------------------------------------------------
    def teams(self) -> list[Json]:
        return teams_json(self.sim.state, self.sim.policy, {})

    def unassigned(self) -> Json:
        return unassigned_json(self.sim.state, self.sim.policy)

    def tasks(self) -> list[Json]:
        return tasks_json(self.sim.state, self.sim.policy, self.sim.now)

    def priority_classes(self) -> list[Json]:
        return classes_json(self.sim.state, self.sim.policy, self.sim.now)

    def set_capacity(self, healthy_gpus_by_node: dict[str, int]) -> None:
        for node in list(self._out):
            if healthy_gpus_by_node.get(node, 0) > 0:
                self._out.discard(node)
                if self.sim.is_down(node):
                    self.sim.repair_node(node)

    async def on_node_out(self, node: str, reason: str) -> None:
        if node in self._out:
            return
        self._out.add(node)
        # down until the coordinator returns it: set_capacity repairs it then
        self.sim.fail_node(node, repair_s=None)

    async def run(self) -> None:
        last = self._clock()
        while True:
            await asyncio.sleep(self._step_s)
            now = self._clock()
            self.sim.advance((now - last) * self.speed)
            last = now
