"""What the governance engine decides. Frozen, comparable, each with a reason for the audit
log; tasks are named by key (``namespace/task``) so decisions stay small and hashable."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class PreemptCause(StrEnum):
    RECLAIM = "reclaim"
    """A team within its guarantee takes back GPUs that others borrowed."""
    PRIORITY = "priority"
    """A higher-priority task of a team with preemptLowerPriority, within its guarantee."""


@dataclass(frozen=True)
class Admit:
    task: str
    team: str
    gpus: int
    borrowed: int
    """GPUs of this admission beyond the team's guarantee (0: all within it)."""
    reason: str
    nodes: tuple[tuple[str, int], ...] | None = None
    """GPUs per node when the engine placed the gang (capacity given per node). On
    Kubernetes this only shows the gang fits: the scheduler places the pods, and the caller
    records where with ``GovernanceState.place``."""


@dataclass(frozen=True)
class Preempt:
    victim: str
    preemptor: str
    cause: PreemptCause
    grace_s: float
    """Checkpoint grace the victim gets before it is killed."""
    gpus: int
    work_lost_gpu_s: float
    """GPU-seconds since the victim's last checkpoint (or start), as estimated now."""
    reason: str


@dataclass(frozen=True)
class Requeue:
    task: str
    backoff_until: float
    counted: bool
    """Whether it uses one of the task's requeues (a fault does; a preemption does not)."""
    lost_gpu_s: float
    reason: str


@dataclass(frozen=True)
class Fail:
    task: str
    reason: str


Decision = Admit | Preempt | Requeue | Fail


@dataclass(frozen=True)
class Decisions:
    """One round of decisions. ``waiting`` says why each waiting task was not admitted."""

    admit: tuple[Admit, ...] = ()
    preempt: tuple[Preempt, ...] = ()
    waiting: Mapping[str, str] = field(default_factory=dict)
    stopped_at: str | None = None
    """The task whose victim search the round did not start, having chosen
    ``preemption.maxVictimsPerRound`` victims: it and the undecided tasks after it wait for
    the next round. None: the round went through the whole queue."""

    def __iter__(self) -> Iterator[Decision]:
        yield from self.preempt
        yield from self.admit

    def __len__(self) -> int:
        return len(self.admit) + len(self.preempt)
