"""Requeue on Slurm: the jobs of a node gpuwarden takes out are signalled, given their grace,
then requeued (or cancelled, with the reason). The decisions are :mod:`.jobs`'s; this module
runs them, with ``squeue``, ``scancel`` and ``scontrol``.

It stands where Kubernetes' task governor stands (:class:`coordinator.task_governance.
TaskGovernance`): the coordinator calls :meth:`SlurmRequeue.on_node_out` for every node it
takes out of service, and runs :meth:`SlurmRequeue.run` while it leads. It governs nothing
else: quotas, fair share and priorities are Slurm's own (``gpuwarden policy export --slurm``
writes them in Slurm's terms), so no second scheduler runs beside slurmctld.

``on_node_out`` returns at once (the remediator awaits it); each node's jobs are handled in
a task of their own, so one node's grace delays no other node, and only once Slurm shows
the node drained (``drained``), so a requeued job cannot land on it again. Every decision is audited
(kind ``decision``, ``dry_run`` set under ``--dry-run``, when nothing else happens), every
command before and after. Like the task governor's, no entry names a node in its ``node``
column (the remediator rebuilds node lifecycles from the entries that do); the node is in
the details.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.backends.slurm.commands import SlurmRunner, SlurmUnavailable
from coordinator.backends.slurm.jobs import (
    JobPlan,
    SlurmJob,
    Step,
    after_grace,
    parse_squeue,
    plan_node_out,
    waiting_to_settle,
)
from coordinator.backends.slurm.names import NodeNames
from coordinator.backends.slurm.nodes import SlurmReplyError
from gpuwarden_common.backoff import backoff_delay

log = structlog.get_logger("coordinator.slurm.requeue")

Json = dict[str, Any]
T = TypeVar("T")
# how long a job may stay COMPLETING after the grace before gpuwarden acts anyway
SETTLE_S = 10.0


@dataclass(frozen=True)
class RequeueSettings:
    """``--slurm-requeue-signal``, ``--slurm-requeue-grace``, ``--slurm-max-requeues``."""

    signal: str = "USR1"
    grace_s: float = 60.0
    max_requeues: int = 3
    actor: str = "gpuwarden"
    dry_run: bool = False


class SlurmRequeue:
    def __init__(
        self,
        commands: SlurmRunner,
        audit: AuditLog,
        settings: RequeueSettings,
        *,
        names: NodeNames | None = None,
        held_out: Callable[[], Awaitable[Iterable[str]]] | None = None,
        drained: Callable[[str], Awaitable[bool]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._commands = commands
        self._audit = audit
        self.settings = settings
        self._names = names or NodeNames()
        self._held_out = held_out
        self._drained = drained
        self._sleep = sleep
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._busy: set[str] = set()

    # --- TaskGovernance: the views are Slurm's own (squeue, sshare) -------------------------
    def teams(self) -> list[Json]:
        return []

    def unassigned(self) -> Json | None:
        return None  # Slurm's accounts hold the teams (gpuwarden policy export --slurm)

    def tasks(self) -> list[Json]:
        return []

    def priority_classes(self) -> list[Json]:
        return []

    def set_capacity(self, healthy_gpus_by_node: dict[str, int]) -> None:
        return None  # Slurm places jobs itself; drained nodes get none

    async def on_node_out(self, node: str, reason: str) -> None:
        self._queue.put_nowait((node, reason))

    async def run(self) -> None:
        """Handle nodes as they are taken out, until cancelled. First, the nodes already
        held out (``held_out``: gpuwarden's drains): a job still running on one was being
        handled when an earlier coordinator stopped, since a drained node starts none."""
        if self._held_out is not None:
            for node in sorted(await self._retried(self._held_out)):
                self._queue.put_nowait((node, "held out of service by gpuwarden"))
        async with asyncio.TaskGroup() as tasks:
            while True:
                node, reason = await self._queue.get()
                if node in self._busy:  # an escalation of a node being handled: same jobs
                    continue
                self._busy.add(node)
                tasks.create_task(self._handle(node, reason), name=f"slurm-requeue-{node}")

    # --- one node -------------------------------------------------------------------------
    async def _handle(self, node: str, reason: str) -> None:
        try:
            await self.handle_node(node, reason)
        except Exception:  # one node's trouble must not end the others'
            log.exception("requeue failed", node=node)
        finally:
            self._busy.discard(node)

    async def handle_node(self, node: str, reason: str) -> list[JobPlan]:
        """Signal, wait, requeue or cancel the jobs on agent node ``node``; returns what was
        finally done to each job."""
        slurm_node = self._names.slurm(node)
        plans = plan_node_out(await self._jobs(), slurm_node, self.settings.max_requeues)
        if plans and not self.settings.dry_run and self._drained is not None:
            # a job requeued before the drain lands could be placed on this node again
            await self._retried(lambda: self._until_drained(slurm_node))
            plans = plan_node_out(await self._jobs(), slurm_node, self.settings.max_requeues)
        for plan in plans:
            await self._record(AuditEntry(
                kind=AuditKind.DECISION, actor=self.settings.actor, task=_task(plan.job),
                team=plan.job.account or None, action=plan.step.value,
                reason=f"{plan.why}: {reason}", details=_details(plan, node, slurm_node),
                dry_run=self.settings.dry_run,
            ))  # fmt: skip
        if not plans or self.settings.dry_run:
            return plans
        for plan in plans:  # "checkpoint now": the batch shell gets it, --batch (see docs)
            await self._run(plan, "signal", node, "scancel",
                            f"--signal={self.settings.signal}", "--batch", str(plan.job.id))
        await self._sleep(self.settings.grace_s)
        current = await self._settled([p.job.id for p in plans])
        finals = [after_grace(p, current.get(p.job.id)) for p in plans]
        for final in finals:
            if final.step is Step.REQUEUE:
                await self._run(final, "requeue", node, "scontrol", "requeue", str(final.job.id))
            elif final.step is Step.CANCEL:
                # scancel takes no reason: the job's admin comment keeps it (scontrol show
                # job, sacct), the audit log too
                await self._run(final, "comment", node, "scontrol", "update",
                                f"jobid={final.job.id}",
                                f"admincomment=gpuwarden: cancelled: {final.why}")
                await self._run(final, "cancel", node, "scancel", str(final.job.id))
            else:
                log.info("job left as it is", node=node, job=final.job.id, why=final.why)
        return finals

    async def _until_drained(self, slurm_node: str) -> None:
        assert self._drained is not None
        waited = 0
        while not await self._drained(slurm_node):
            waited += 1
            if waited == 1:
                log.warning("waiting for the node's drain before requeuing its jobs",
                            node=slurm_node)  # fmt: skip
            await self._sleep(backoff_delay(waited, 0.5, 30.0))

    async def _jobs(self) -> list[SlurmJob]:
        """Every job, from ``squeue --json`` (whose node filter the JSON output ignores);
        retried with backoff while the controller does not answer: the node stays out, and
        its jobs must not be forgotten."""
        return await self._retried(self._list_jobs)

    async def _list_jobs(self) -> list[SlurmJob]:
        result = await self._commands.run("squeue", "--json")
        if not result.ok:
            raise SlurmUnavailable(f"squeue --json: {result.error}")
        return parse_squeue(result.stdout)

    async def _retried(self, read: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await read()
            except (SlurmUnavailable, SlurmReplyError) as exc:
                failures += 1
                log.warning("cannot read Slurm; retrying", error=str(exc), attempt=failures)
            await self._sleep(backoff_delay(failures, 1.0, 60.0))

    async def _settled(self, ids: Iterable[int]) -> dict[int, SlurmJob]:
        wanted = set(ids)
        deadline = time.monotonic() + SETTLE_S
        while True:
            jobs = [j for j in await self._jobs() if j.id in wanted]
            if not waiting_to_settle(jobs) or time.monotonic() > deadline:
                return {j.id: j for j in jobs}
            await self._sleep(0.2)

    async def _run(self, plan: JobPlan, action: str, node: str, *argv: str) -> bool:
        started = await self._record(AuditEntry(
            kind=AuditKind.ACTION_STARTED, actor=self.settings.actor, task=_task(plan.job),
            team=plan.job.account or None, action=action, reason=plan.why,
            details={**_details(plan, node, self._names.slurm(node)), "command": list(argv)},
        ))  # fmt: skip
        try:
            result = await self._commands.run(*argv)
            ok, detail = result.ok, result.error if not result.ok else "done"
        except SlurmUnavailable as exc:
            ok, detail = False, str(exc)
        (log.info if ok else log.warning)("slurm job action", node=node, job=plan.job.id,
                                          action=action, ok=ok, detail=detail)  # fmt: skip
        await asyncio.to_thread(self._audit.finish, started, actor=self.settings.actor,
                                outcome="ok" if ok else "failed", reason=detail)  # fmt: skip
        return ok

    async def _record(self, entry: AuditEntry) -> int:
        return await asyncio.to_thread(self._audit.record, entry)


def _task(job: SlurmJob) -> str:
    return f"slurm-job/{job.id}"


def _details(plan: JobPlan, node: str, slurm_node: str) -> Json:
    return {"job_id": plan.job.id, "job_name": plan.job.name, "user": plan.job.user,
            "state": plan.job.state, "restarts": plan.job.restarts, "step": plan.step.value,
            "slurm_node": slurm_node, "agent_node": node}  # fmt: skip
