"""What a round reads off the tasks before deciding anything: the teams' usage, the queue,
and what is on its way to whom (victims leaving, GPUs owed). Internal to :mod:`.engine`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.governance.books import Books
from coordinator.governance.tasks import GovernanceState, RequeueCause, Task, TaskState

# Set membership instead of the TaskState properties: the round tests every task's state.
_HOLDING = frozenset(state for state in TaskState if state.holding)
_WAITING = frozenset(state for state in TaskState if state.waiting)


@dataclass
class Intake:
    queue: list[Task] = field(default_factory=list)
    """Tasks that may be admitted now: their team is known, all their pods are, and they
    are out of backoff."""
    demand: dict[str, int] = field(default_factory=dict)
    """GPUs of each task in the queue (its pods added up once: every pass reads them)."""
    waiting: dict[str, str] = field(default_factory=dict)
    """Why each of the others waits."""
    inflight: dict[str, int] = field(default_factory=dict)
    """GPUs being freed for each preemptor: its victims, preempted, not yet gone."""
    claimed: dict[str, int] = field(default_factory=dict)
    """GPUs freed for each preemptor since: its victims are gone and back in the queue,
    and their GPUs are the preemptor's (DESIGN.md) for as long as it waits."""
    leaving: dict[str, list[Mapping[str, int]]] = field(default_factory=dict)
    """Where the GPUs being freed for each preemptor are (capacity per node only)."""
    used_on_node: dict[str, int] = field(default_factory=dict)
    held_total: int = 0
    held_unplaced: int = 0
    """GPUs held by tasks whose placement is not known yet (the scheduler has not placed
    their pods)."""


def read_tasks(state: GovernanceState, books: Books, now: float) -> Intake:
    """One pass over every task; the teams' usage and members go into ``books``."""
    out = Intake()
    per_node = state.capacity.by_node is not None
    book_of, inflight, claimed = books.of, out.inflight, out.claimed  # this loop sees every task
    used_on_node = out.used_on_node
    for task in state.tasks.values():
        task_state = task.state
        if task_state in _HOLDING:
            gpus = task.gpus
            out.held_total += gpus
            if not task.placement:
                out.held_unplaced += gpus
            elif per_node:
                for node, count in task.placement.items():
                    used_on_node[node] = used_on_node.get(node, 0) + count
            if task_state is TaskState.PREEMPTED:
                preemptor = task.preempted_by
                if preemptor is not None:
                    inflight[preemptor] = inflight.get(preemptor, 0) + gpus
                    if per_node and task.placement:
                        out.leaving.setdefault(preemptor, []).append(task.placement)
            else:
                book = book_of.get(task.namespace)
                if book is not None:
                    book.used += gpus
                    book.members.append(task)
        elif task_state in _WAITING:
            _enqueue(task, books, now, out)
            preemptor = task.preempted_by
            if (
                preemptor is not None
                and task.requeue_cause is RequeueCause.PREEMPTION
                and not task.claim_spent
            ):
                claimed[preemptor] = claimed.get(preemptor, 0) + task.gpus
    books.count_borrowed()
    return out


def _enqueue(task: Task, books: Books, now: float, out: Intake) -> None:
    if task.namespace not in books.of:
        out.waiting[task.key] = f"namespace {task.namespace} belongs to no team in the policy"
    elif not task.complete:
        out.waiting[task.key] = (
            f"waiting for all {task.size} pods of the gang ({len(task.pod_gpus)} known)"
        )
    elif task.backoff_until is not None and task.backoff_until > now:
        out.waiting[task.key] = f"backing off after a requeue until {task.backoff_until:.0f}"
    else:
        out.queue.append(task)
        out.demand[task.key] = task.gpus
