"""Idle allocations: tasks that hold GPUs and leave them under the idle threshold. Pure.

A task is flagged once its measured utilization has stayed under the threshold for
``idle_after_s`` on end; a measurement at or over it clears the flag. A task without a
measurement (a silent node, pods not placed) keeps its state: silence is not idleness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.ledger.accrue import TaskUse

TaskKey = tuple[str, float]


@dataclass(frozen=True)
class IdleChange:
    key: TaskKey
    flagged: bool
    """True: newly flagged idle; False: busy again (or gone)."""
    since: float
    utilization_pct: float | None


@dataclass
class IdleWatch:
    threshold_pct: float = 5.0
    idle_after_s: float = 1800.0
    under_since: dict[TaskKey, float] = field(default_factory=dict)
    flagged: dict[TaskKey, float] = field(default_factory=dict)

    def update(self, holding: set[TaskKey], use: Mapping[TaskKey, TaskUse],
               now: float) -> list[IdleChange]:  # fmt: skip
        changes: list[IdleChange] = []
        for key in list(self.under_since):
            if key not in holding:
                del self.under_since[key]
                if self.flagged.pop(key, None) is not None:
                    changes.append(IdleChange(key, False, now, None))
        for key, measured in use.items():
            if measured.utilization_pct >= self.threshold_pct:
                self.under_since.pop(key, None)
                since = self.flagged.pop(key, None)
                if since is not None:
                    changes.append(IdleChange(key, False, since, measured.utilization_pct))
                continue
            since = self.under_since.setdefault(key, now)
            if key not in self.flagged and now - since >= self.idle_after_s:
                self.flagged[key] = since
                changes.append(IdleChange(key, True, since, measured.utilization_pct))
        return changes
