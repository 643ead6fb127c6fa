"""Victim order: running tasks made candidates, and the order the victim search takes them
in after "borrowed first" (DESIGN.md): lower priority, then least work lost
(checkpoint-aware), then most recently admitted, then key. Internal to the engine; the
lists that hold candidates in this order are in :mod:`.candidates`.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.governance.books import Book
from coordinator.governance.ranking import Priorities
from coordinator.governance.tasks import Task


def admitted_at(task: Task) -> float:
    return task.admitted_at if task.admitted_at is not None else task.queued_at


# Not frozen: a frozen dataclass costs several times as much to build (each field goes
# through object.__setattr__), and a round builds one per candidate task. Nothing changes it.
@dataclass(slots=True, eq=False)
class Victim:
    """A running task as a preemption candidate, with what the choice reads copied out."""

    task: Task
    key: str
    book: Book
    gpus: int
    effective: int
    work_lost: float
    """GPU-seconds since its last checkpoint (or start), as the choice and the decision
    read them."""
    rank: int = 0
    """Place in its list (victim order)."""
    listed: int = -1
    """Which list it was made from: -1 for the borrowed tasks, else its team's index."""


class CandidateOrder:
    """Makes running tasks candidates and puts them in DESIGN.md's order after "borrowed
    first", which is the same for every victim of one list (a list holds either borrowed
    tasks or a team's own): lower priority, then least work lost (checkpoint-aware), then
    most recently admitted, then key.

    Kept apart from the round on purpose: a cache holding something that refers back to
    the round would make a reference cycle, leaving the round's thousands of objects to the
    cyclic garbage collector instead of freeing them as the round ends."""

    def __init__(self, now: float, *, checkpoint_aware: bool, idle_first: bool = False) -> None:
        self.now = now
        self.checkpoint_aware = checkpoint_aware
        self.idle_first = idle_first
        """Idle tasks (``Task.idle_since``) first within a priority level."""

    def order(self, tasks: list[Task], effective: list[int]) -> tuple[list[int], list[float]]:
        """The positions of ``tasks`` (of effective priorities ``effective``) in victim
        order, with the work each would lose (by position in ``tasks``).

        Successive stable sorts of the positions, least significant key first, which give
        the order of one sort on the tuple of keys (as :func:`.ranking.sort_queue` does):
        the borrowed tasks of a lender's whole cluster are thousands, and a tuple for
        each cost more to build and compare, and in garbage collections, than a sort on
        each plain key."""
        now = self.now
        work = [task.work_at_risk(now) for task in tasks]
        order = sorted(range(len(tasks)), key=[task.key for task in tasks].__getitem__)
        order.sort(key=[-admitted_at(task) for task in tasks].__getitem__)
        if self.checkpoint_aware:
            order.sort(key=work.__getitem__)
        if self.idle_first:
            order.sort(key=[_busy_rank(task, True) for task in tasks].__getitem__)
        order.sort(key=effective.__getitem__)
        return order, work

    def order_level(self, tasks: list[Task]) -> tuple[list[Task], list[float]]:
        """Tasks of one priority level in victim order, with the work each would lose."""
        now = self.now
        work = [task.work_at_risk(now) for task in tasks]
        keys: list[tuple[int, float, float, str]] | list[tuple[int, float, str]]
        idle_first = self.idle_first
        if self.checkpoint_aware:
            keys = [
                (_busy_rank(task, idle_first), lost, -admitted_at(task), task.key)
                for task, lost in zip(tasks, work, strict=True)
            ]
        else:
            keys = [(_busy_rank(task, idle_first), -admitted_at(task), task.key)
                    for task in tasks]  # fmt: skip
        order = sorted(range(len(tasks)), key=keys.__getitem__)
        return [tasks[index] for index in order], [work[index] for index in order]


def _busy_rank(task: Task, idle_first: bool) -> int:
    return 1 if idle_first and task.idle_since is None else 0


class Levels:
    """A team's running tasks grouped by effective priority, with the GPUs of each level.

    Both victim orders are by priority first and a round has only a few distinct levels,
    so the work of ordering tasks is done only for the levels a round reaches."""

    def __init__(self, members: list[Task], priorities: Priorities) -> None:
        self.tasks: dict[int, list[Task]] = {}
        self.gpus: dict[int, int] = {}
        for member, effective in zip(members, priorities.effectives(members), strict=True):
            level = self.tasks.get(effective)
            if level is None:
                self.tasks[effective] = [member]
                self.gpus[effective] = member.gpus
            else:
                level.append(member)
                self.gpus[effective] += member.gpus
        self.ascending = sorted(self.tasks)
