"""The teams' running accounts during one round: GPUs used, guaranteed, borrowed.

Internal to the engine: every pass reads and changes them, and the victim search reads
which teams are still beyond their guarantee (only those may be reclaimed from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from coordinator.governance.fairshare import scaled_guarantees
from coordinator.governance.policy import Policy, Team
from coordinator.governance.tasks import Task


@dataclass(slots=True)
class Book:
    """A team's running account during one round."""

    index: int
    team: Team
    guarantee: int
    borrow_limit: int
    used: int = 0
    """GPUs of its admitted and running tasks (preempted ones are leaving), plus the
    demand of its tasks waiting on a preemption or holding a reservation: those GPUs are
    on their way to the team, so a later task must not count on the same room in its
    guarantee."""
    members: list[Task] = field(default_factory=list)
    """Its admitted and running tasks, the candidates for preemption."""
    may_borrow: bool = field(init=False)
    """Its lending mode borrows and its borrow limit is above 0 (read for every borrower)."""
    held_for: str | None = None
    """A task of the team that waited past the reservation limit and does not fit within
    the guarantee yet: the team's later tasks wait behind it (see :mod:`.reservation`)."""

    def __post_init__(self) -> None:
        self.may_borrow = self.team.lending.borrows and self.borrow_limit > 0

    @property
    def borrowed(self) -> int:
        return max(0, self.used - self.guarantee)

    @property
    def idle(self) -> int:
        return max(0, self.guarantee - self.used)

    @property
    def beyond(self) -> bool:
        """It holds more than its guarantee: its tasks past it may be reclaimed."""
        return self.used > self.guarantee


class Books:
    """Every team's account, by policy order and by namespace, with the GPUs borrowed by
    all of them added up (each preemption attempt reads it; kept current here instead of
    adding up every team's again)."""

    def __init__(self, policy: Policy, healthy: int) -> None:
        guarantees = scaled_guarantees([team.quota.gpus for team in policy.teams], healthy)
        self.all = [
            Book(index, team, guarantee, team.borrow_limit_gpus)
            for index, (team, guarantee) in enumerate(zip(policy.teams, guarantees, strict=True))
        ]
        self.of = {book.team.namespace: book for book in self.all}
        self.borrowed_total = 0

    def count_borrowed(self) -> None:
        """Adds up what every team borrows, once the tasks are counted in."""
        self.borrowed_total = sum(book.borrowed for book in self.all)

    def change_used(self, book: Book, delta: int) -> bool:
        """Adds ``delta`` GPUs to the team's usage; True when that moved it across its
        guarantee (its borrowed tasks became, or stopped being, reclaimable)."""
        before = book.used
        after = before + delta
        book.used = after
        guarantee = book.guarantee
        self.borrowed_total += max(0, after - guarantee) - max(0, before - guarantee)
        return (before > guarantee) != (after > guarantee)
