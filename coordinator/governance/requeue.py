"""Requeue of tasks that hold GPUs but cannot run: hit by a node fault, or admitted and
never running.

When a node is marked for recovery, every task holding GPUs on it is evicted (the lead
force-deletes the pods, all pods of a gang), and requeued at its original place in the
queue (``queued_at`` is kept) after an exponential backoff, until it has used its max
requeues; then it fails. A task already being preempted is requeued without using one of
its requeues: it was leaving anyway.

An admitted task whose pods are not all running ``admittedTimeoutSeconds`` after its
admission (Kueue's waitForPodsReady) is requeued the same way, using a requeue, so a task
that can never start (its image does not pull, no node matches its selector) ends failed
instead of holding its team's GPUs forever.
"""

from __future__ import annotations

from collections.abc import Iterable

from coordinator.governance.decisions import Fail, Requeue
from coordinator.governance.policy import RequeueSettings
from coordinator.governance.tasks import Task, TaskState


def on_admission_timeout(
    tasks: Iterable[Task], now: float, settings: RequeueSettings
) -> list[Requeue | Fail]:
    """Decisions for the admitted tasks whose pods are not all running
    ``settings.admitted_timeout_seconds`` after their admission (none when that is None)."""
    timeout = settings.admitted_timeout_seconds
    if timeout is None:
        return []
    late = [
        task
        for task in tasks
        if task.state is TaskState.ADMITTED
        and task.admitted_at is not None
        and now - task.admitted_at >= timeout
    ]
    decisions: list[Requeue | Fail] = []
    for task in sorted(late, key=lambda t: t.key):
        why = f"its pods were not all running {timeout:g} s after admission"
        decisions.append(_requeue_or_fail(task, now, settings, why))
    return decisions


def _requeue_or_fail(task: Task, now: float, settings: RequeueSettings, why: str) -> Requeue | Fail:
    limit = task.max_requeues if task.max_requeues is not None else settings.max_requeues
    attempt = task.requeue_count + 1
    if attempt > limit:
        return Fail(
            task.key, f"{why}, and it was already requeued {task.requeue_count} times (max {limit})"
        )
    backoff = settings.backoff_for(attempt)
    return Requeue(
        task.key,
        backoff_until=now + backoff,
        counted=True,
        lost_gpu_s=0.0,
        reason=f"{why}: requeue {attempt} of {limit} at the task's original place, backing "
        f"off {backoff:.0f} s",
    )


def on_node_fault(
    tasks: Iterable[Task],
    node: str,
    now: float,
    settings: RequeueSettings | None = None,
) -> list[Requeue | Fail]:
    """Decisions for the tasks on ``node``, which just went down or into recovery. Tasks
    whose placement is unknown are not touched (the lead matches pods to nodes)."""
    settings = settings if settings is not None else RequeueSettings()
    decisions: list[Requeue | Fail] = []
    hit = [task for task in tasks if task.state.holding and node in task.placement]
    for task in sorted(hit, key=lambda t: t.key):
        lost = task.work_at_risk(now)
        if task.state is TaskState.PREEMPTED:
            decisions.append(
                Requeue(
                    task.key,
                    backoff_until=now,
                    counted=False,
                    lost_gpu_s=lost,
                    reason=f"node {node} failed while the task was being preempted",
                )
            )
            continue
        limit = task.max_requeues if task.max_requeues is not None else settings.max_requeues
        attempt = task.requeue_count + 1
        if attempt > limit:
            decisions.append(
                Fail(
                    task.key,
                    f"node {node} failed and the task was already requeued "
                    f"{task.requeue_count} times (max {limit})",
                )
            )
            continue
        backoff = settings.backoff_for(attempt)
        decisions.append(
            Requeue(
                task.key,
                backoff_until=now + backoff,
                counted=True,
                lost_gpu_s=lost,
                reason=(
                    f"node {node} failed: requeue {attempt} of {limit} at the task's original "
                    f"place, backing off {backoff:.0f} s; {lost / 3600:.2f} GPU-hours since "
                    f"the last checkpoint lost"
                ),
            )
        )
    return decisions
