"""What happens to the jobs on a node gpuwarden takes out of service. Pure: the decisions
only; :mod:`.requeue` runs them.

Checkpoint-aware, in two steps:

1. :func:`plan_node_out`: every job running on the node is to be signalled ("checkpoint
   now", ``USR1`` by default) and, after its grace, requeued; a job that cannot be requeued
   (submitted ``--no-requeue``, or requeued ``max_requeues`` times already: Slurm's restart
   count is the requeue count) is to be cancelled instead, with the reason recorded.
2. :func:`after_grace`: what to do now, from the job as Slurm shows it after the grace. A
   job requeued meanwhile (by itself, as Lightning and submitit jobs do on ``USR1``, or by
   Slurm) is left alone: never requeued twice. One that finished (exit 0) or was cancelled
   is left alone too. One still running, or killed by the signal (``FAILED``: it had no
   handler), is requeued, or cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coordinator.backends.slurm.nodes import SlurmReplyError

# a job in these states occupies its nodes and can be stopped
_ACTIVE = frozenset({"RUNNING", "CONFIGURING", "SUSPENDED", "STOPPED"})
# ...and in these, a job that was running when signalled may still be requeued
_REQUEUEABLE_AFTER = _ACTIVE | {"FAILED"}


class Step(StrEnum):
    REQUEUE = "requeue"
    CANCEL = "cancel"
    NONE = "none"


@dataclass(frozen=True)
class SlurmJob:
    """One job of ``squeue --json``: ``nodes`` its allocated nodes (expanded names),
    ``restarts`` Slurm's restart count, ``requeueable`` false for ``--no-requeue`` jobs."""

    id: int
    state: str
    nodes: frozenset[str]
    restarts: int
    requeueable: bool
    name: str = ""
    user: str = ""
    account: str = ""


@dataclass(frozen=True)
class JobPlan:
    job: SlurmJob
    step: Step
    why: str


def parse_squeue(text: str) -> list[SlurmJob]:
    """``squeue --json`` (Slurm 22.05's v0.0.38 layout). Raises :class:`SlurmReplyError`."""
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise SlurmReplyError(f"squeue --json: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SlurmReplyError("squeue --json: expected a JSON object")
    if data.get("errors"):
        raise SlurmReplyError(f"squeue --json: {data['errors']}")
    return [_job(raw) for raw in data.get("jobs") or []]


def _job(raw: dict[str, Any]) -> SlurmJob:
    resources = raw.get("job_resources") or {}
    # allocated_nodes lists each node by name; "nodes" is a hostlist (node[1-3]) to expand
    nodes = frozenset(
        str(n["nodename"]) for n in resources.get("allocated_nodes") or [] if n.get("nodename")
    )
    return SlurmJob(
        id=int(raw["job_id"]),
        state=str(raw.get("job_state") or "").upper(),
        nodes=nodes,
        restarts=int(raw.get("restart_cnt") or 0),
        requeueable=bool(raw.get("requeue", True)),
        name=str(raw.get("name") or ""),
        user=str(raw.get("user_name") or ""),
        account=str(raw.get("account") or ""),
    )


def plan_node_out(jobs: Iterable[SlurmJob], node: str, max_requeues: int) -> list[JobPlan]:
    """The jobs running on Slurm node ``node``, each with what awaits it after its grace."""
    plans = []
    for job in sorted(jobs, key=lambda j: j.id):
        if node not in job.nodes or job.state not in _ACTIVE:
            continue  # pending jobs (requeued already, or never started) are not touched
        if not job.requeueable:
            plans.append(JobPlan(job, Step.CANCEL, f"node {node} taken out of service and "
                                 "the job was submitted --no-requeue"))  # fmt: skip
        elif job.restarts >= max_requeues:
            plans.append(JobPlan(job, Step.CANCEL, f"node {node} taken out of service and "
                                 f"the job was requeued {job.restarts} times already "
                                 f"(max {max_requeues})"))  # fmt: skip
        else:
            plans.append(JobPlan(job, Step.REQUEUE, f"node {node} taken out of service"))
    return plans


def after_grace(plan: JobPlan, now: SlurmJob | None) -> JobPlan:
    """What to do with ``plan``'s job once its grace is over, seeing it as ``now``."""
    if now is None:
        return JobPlan(plan.job, Step.NONE, "gone from the queue during its grace")
    if now.restarts > plan.job.restarts:
        return JobPlan(now, Step.NONE, f"requeued already during its grace (restart "
                       f"{now.restarts}): not requeued twice")  # fmt: skip
    if now.state == "PENDING":
        return JobPlan(now, Step.NONE, "pending already: not requeued twice")
    if plan.step is Step.REQUEUE and now.state in _REQUEUEABLE_AFTER:
        return JobPlan(now, Step.REQUEUE, plan.why)
    if plan.step is Step.CANCEL and now.state in _ACTIVE:
        return JobPlan(now, Step.CANCEL, plan.why)
    return JobPlan(now, Step.NONE, f"ended ({now.state}) during its grace: left as it is")


def waiting_to_settle(jobs: Iterable[SlurmJob]) -> bool:
    """A job still COMPLETING cannot be requeued yet: Slurm refuses until it settles."""
    return any(j.state == "COMPLETING" for j in jobs)
