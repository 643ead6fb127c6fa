"""Bounded wait: capacity held for a task that waited too long (Slurm's backfill reservation).

Best effort alone (a task that does not fit is skipped, smaller ones behind it go) lets a
stream of small tasks starve a big one: every GPU that frees up is taken before enough are
free together. So once the first task of a team's queue has waited longer than
``reservation.afterWaitSeconds``, the engine holds capacity for it as it frees up:

* its team's guarantee: while it does not fit within it, no task behind it in the team's
  queue is admitted (the team's room is kept for it);
* GPUs: once it fits within the guarantee but not on the free GPUs, the free GPUs of the
  nodes that will hold its pods soonest (most free GPUs) are held for it, round after
  round, until its pods fit; tasks behind it in the queue use the other GPUs only.

Its wait is then bounded by the limit plus the time the tasks running where it will go take
to end (or, within its guarantee, a reclaim). Pure; used by :mod:`.engine`.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from coordinator.governance.books import Book
from coordinator.governance.placement import FreeGpus
from coordinator.governance.tasks import Task


def holders(
    queue: Sequence[Task],
    book_of: Mapping[str, Book],
    limit: float | None,
    now: float,
    busy: Container[str],
) -> dict[int, str]:
    """Per team (by index), the first task of its queue, in queue order, that waited longer
    than ``limit``, asks for GPUs and can fit within its team's guarantee at all; tasks in
    ``busy`` (GPUs are being freed, or are owed, to them) are on their way already."""
    found: dict[int, str] = {}
    if limit is None:
        return found
    teams = len(book_of)  # one namespace per team
    for task in queue:
        if len(found) == teams:
            break  # every team has its holder: the rest of a long queue changes nothing
        book = book_of[task.namespace]
        if book.index in found or now - task.queued_at <= limit:
            continue
        demand = task.gpus
        if 0 < demand <= book.guarantee and task.key not in busy:
            found[book.index] = task.key
    return found


def hold_on_nodes(
    slots: FreeGpus, healthy: Mapping[str, int], pod_gpus: Sequence[int]
) -> dict[str, int]:
    """Takes out of ``slots`` the free GPUs to hold for the pods and returns them per node:
    largest pod first, each on the node with the most free GPUs (ties: by name) whose
    healthy capacity holds it besides the pods already planned there."""
    held: dict[str, int] = {}
    planned: dict[str, int] = {}
    for pod in sorted((gpus for gpus in pod_gpus if gpus > 0), reverse=True):
        node = _most_free(slots, healthy, planned, pod)
        if node is None:
            continue  # no node with free GPUs can hold it yet: nothing to hold for it
        planned[node] = planned.get(node, 0) + pod
        take = min(pod, slots.free_on(node))
        slots.take({node: take})
        held[node] = held.get(node, 0) + take
    return held


def _most_free(
    slots: FreeGpus, healthy: Mapping[str, int], planned: Mapping[str, int], pod: int
) -> str | None:
    for _count, nodes in slots.by_count_descending():
        for node in nodes:
            if healthy.get(node, 0) - planned.get(node, 0) >= pod:
                return node
    return None


# -- the words the waiting tasks are given ------------------------------------------------------


def kept_words(task: Task, book: Book, demand: int, now: float) -> str:
    return (
        f"waited {_waited(task, now)} past reservation.afterWaitSeconds: team "
        f"{book.team.name}'s guarantee is kept for it ({book.used} of {book.guarantee} "
        f"GPUs held, {demand} needed)"
    )


def held_words(task: Task, held: int, demand: int, now: float) -> str:
    return (
        f"waited {_waited(task, now)} past reservation.afterWaitSeconds: {held} GPUs "
        f"held for it as they free up ({demand} needed)"
    )


def behind_words(book: Book) -> str:
    return (
        f"behind {book.held_for} in team {book.team.name}'s queue, which waited past "
        f"reservation.afterWaitSeconds: the team's guarantee is kept for it"
    )


def _waited(task: Task, now: float) -> str:
    return f"{(now - task.queued_at) / 3600:.1f} h"
