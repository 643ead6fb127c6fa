"""Effective priority and queue order: what the engine ranks tasks by.

A task's effective priority is its class weight plus an aging boost for each time it was
preempted; the queue is ordered by arrival (first-come-first-serve) or by effective
priority, then arrival (task-ranking). Internal to the engine, except
:func:`effective_priority`, which the package exports.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from coordinator.governance.policy import AdmissionOrder, Policy
from coordinator.governance.tasks import Task


def effective_priority(task: Task, policy: Policy, weights: dict[str, int] | None = None) -> int:
    """The class weight plus ``agingBoostPerPreemption`` for each time the task was
    preempted, the boost capped at ``agingMaxBoost``. The boost moves the task up the queue
    and protects it from priority preemption; it never lets it preempt anything (the
    preemptor's own class weight decides that), so aging cannot invert priorities."""
    base = _weight(task, policy, weights if weights is not None else policy.class_weights())
    settings = policy.preemption
    boost = min(
        settings.aging_max_boost, settings.aging_boost_per_preemption * task.times_preempted
    )
    return base + boost


def _weight(task: Task, policy: Policy, weights: dict[str, int]) -> int:
    if task.priority_class is not None and task.priority_class in weights:
        return weights[task.priority_class]
    if policy.default_priority_class is not None:
        return weights[policy.default_priority_class]
    return 0


class Priorities:
    """The policy's priority arithmetic, resolved once per round.

    A task's effective priority depends only on its class and how often it was preempted,
    so the class table (with the default class as fallback) and the aging boosts are
    tables here; a large round asks for thousands of priorities. Values equal
    :func:`effective_priority`.
    """

    def __init__(self, policy: Policy) -> None:
        # Keyed by class or None, so a task's class is looked up as it is (no class and an
        # unknown class both fall back to the default class's weight, or 0).
        self._weights: dict[str | None, int] = {
            name: weight for name, weight in policy.class_weights().items()
        }
        default = policy.default_priority_class
        self._fallback = self._weights[default] if default is not None else 0
        self._boosts = _Boosts(
            policy.preemption.aging_boost_per_preemption, policy.preemption.aging_max_boost
        )

    def base(self, task: Task) -> int:
        """The class weight alone: what a preemptor is judged by."""
        return self._weights.get(task.priority_class, self._fallback)

    def effectives(self, tasks: Iterable[Task]) -> list[int]:
        """Each task's class weight plus its aging boost, capped (see
        :func:`effective_priority`): computed for many tasks at once, as a round ranks
        thousands (one call instead of one per task)."""
        weight, fallback, boosts = self._weights.get, self._fallback, self._boosts
        return [
            weight(task.priority_class, fallback) + boosts[task.times_preempted] for task in tasks
        ]


class _Boosts(dict[int, int]):
    """The aging boost for each count of preemptions, ``min(cap, step x count)``, filled in
    as counts are met: a round meets only a few, and a look-up costs less than the sum."""

    def __init__(self, step: int, cap: int) -> None:
        super().__init__()
        self._step = step
        self._cap = cap

    def __missing__(self, preempted: int) -> int:
        boost = self[preempted] = min(self._cap, self._step * preempted)
        return boost


def sort_queue(queue: list[Task], admission: AdmissionOrder, priorities: Priorities) -> None:
    """First-come-first-serve: arrival, then key. Task-ranking: highest effective priority,
    then arrival, then key.

    Done as successive stable sorts, least significant first, which gives the same order as
    one sort on the tuple: comparing plain strings and floats is much cheaper than
    comparing tuples, and a queue holds thousands of tasks."""
    queue.sort(key=_task_key)
    queue.sort(key=_queued_at)
    if admission is AdmissionOrder.TASK_RANKING:
        ranks = priorities.effectives(queue)
        # reverse keeps ties in order
        order = sorted(range(len(queue)), key=ranks.__getitem__, reverse=True)
        queue[:] = [queue[index] for index in order]


_task_key = attrgetter("key")
_queued_at = attrgetter("queued_at")
