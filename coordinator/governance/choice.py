"""One preemptor's victim search as it goes, and the rule's last steps: pruning and the
lenders' guarantees. Internal to :mod:`.preemption`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coordinator.governance.books import Book, Books
from coordinator.governance.decisions import Preempt, PreemptCause
from coordinator.governance.policy import Policy
from coordinator.governance.room import Room
from coordinator.governance.tasks import Task
from coordinator.governance.victim_order import Victim


@dataclass(slots=True)
class Choice:
    """One preemptor's victims as the search takes them, and what is still missing."""

    left_free: int
    left_quota: int
    room: Room | None
    fitted: bool
    chosen: list[Victim] = field(default_factory=list)
    lowered: dict[int, int] = field(default_factory=dict)
    """GPUs taken so far from each lending team (by team index)."""

    @property
    def complete(self) -> bool:
        return self.left_free <= 0 and self.left_quota <= 0 and self.fitted

    def take(self, victim: Victim, *, own: bool) -> None:
        self.chosen.append(victim)
        self.left_free -= victim.gpus
        if own:
            self.left_quota -= victim.gpus
        else:
            self.lowered[victim.book.index] = self.lowered.get(victim.book.index, 0) + victim.gpus
        if self.room is not None:
            self.room.add(victim.task.placement)
            self.fitted = self.left_free <= 0 and self.room.fits()

    def take_all(self, victims: Iterable[Victim], *, own: bool) -> None:
        """As :meth:`take` for each, in order, for a room step that takes them all
        whatever fits meanwhile: whether the pods fit is read once, at the end (a room step
        from slot events takes a dozen victims for each preemptor, and reading the fit
        after each was most of its cost). Not where a fit along the way could say the pods
        were short of one-GPU slots alone: that is remembered (see :class:`.Room`)."""
        room = self.room
        if room is not None and room.flags_short_of_gpus:
            for victim in victims:
                self.take(victim, own=own)
            return
        chosen, lowered = self.chosen, self.lowered
        start = len(chosen)
        for victim in victims:
            chosen.append(victim)
            gpus = victim.gpus
            self.left_free -= gpus
            if own:
                self.left_quota -= gpus
            else:
                index = victim.book.index
                lowered[index] = lowered.get(index, 0) + gpus
        if room is not None and len(chosen) > start:
            room.add_all(victim.task.placement for victim in chosen[start:])
            self.fitted = self.left_free <= 0 and room.fits()


class Detour(Exception):
    """Reading slot events cannot give the rule's answer for this preemptor (a gang of
    several pod sizes short of GPUs alone, or of room only its own team's tasks can make):
    it walks instead."""


@dataclass(slots=True)
class Trial:
    """What one preemptor's search carries from the reclaim steps to its own team's."""

    task: Task
    book: Book
    in_flight: Sequence[Mapping[str, int]]
    resume: int | None = None
    """Rank in the borrowed list where the room step began (None: it did not)."""
    walked: bool = False
    """The room step walked (instead of reading slot events)."""
    walk: bool = False
    """Walk every room step, as the rule reads."""
    gaining: set[str] = field(default_factory=set)
    """Nodes where the borrowed candidates alone bring room (when the room step failed)."""
    events: int = 0
    """How many slots they bring."""
    mixed: bool = False
    """A room step read slot events for pods of several sizes."""
    reached: Mapping[int, tuple[int, set[str]]] | None = None
    """When the borrowed tasks made room, read from slot events: per pod size, the rank
    where its slots were enough and the nodes gaining them."""
    last: int = -1
    """The rank where the pods fit."""
    borrowed_ranks: set[int] = field(default_factory=set)
    """The borrowed candidates the room step took."""
    fell_short: bool = False
    """The room step read slot events and the borrowed tasks could not make room."""
    late: bool = False
    """Borrowed victims were taken after the team's own: the victims are out of order."""


def may_preempt_own(book: Book) -> bool:
    return book.team.preempt_lower_priority and book.used <= book.guarantee


def may_reclaim(
    victim: Victim, book: Book, preempted_by: str | None, lowered: dict[int, int]
) -> bool:
    lender = victim.book
    if lender is book:
        return False
    if victim.key == preempted_by:
        return False  # the task that preempted this one, still running: no ping-pong
    # That team back within its guarantee (with what this choice takes from it already):
    # nothing more to reclaim from it.
    return lender.used - lowered.get(lender.index, 0) > lender.guarantee


def used_up(lowered: Mapping[int, int], books: Books) -> bool:
    """Step 1 brought some lender back within its guarantee: its later tasks are out of
    this preemptor's reach, which no slot index knows."""
    return any(
        books.all[index].used - gpus <= books.all[index].guarantee
        for index, gpus in lowered.items()
    )


def untake(choice: Choice, taken: list[Victim], *, own: bool) -> None:
    """Gives back the victims a walk took, latest first (the choice was not fitted)."""
    for victim in reversed(taken):
        choice.chosen.pop()
        choice.left_free += victim.gpus
        if own:
            choice.left_quota += victim.gpus
        else:
            choice.lowered[victim.book.index] -= victim.gpus
        if choice.room is not None:
            choice.room.remove(victim.task.placement)
    choice.fitted = False


def own_nodes(choice: Choice, book: Book) -> set[str]:
    """Nodes of the team's own victims chosen so far."""
    return {
        node
        for victim in choice.chosen
        if victim.book is book
        for node, gpus in victim.task.placement.items()
        if gpus > 0
    }


def reclaim_first(chosen: list[Victim], book: Book) -> list[Victim]:
    """Victims in the order the rule takes them: borrowed ones (by rank), then the team's
    own (by rank); the borrowed ones a room step adds late belong with the first."""
    borrowed = [victim for victim in chosen if victim.book is not book]
    own = [victim for victim in chosen if victim.book is book]
    borrowed.sort(key=_rank)
    own.sort(key=_rank)
    return borrowed + own


def _rank(victim: Victim) -> int:
    return victim.rank


def pruned(
    chosen: list[Victim], book: Book, left_free: int, left_quota: int, room: Room | None
) -> list[Victim]:
    """``chosen`` less the victims, latest first, whose GPUs are not needed after all
    (``left_free`` and ``left_quota`` are at or below zero: what the set frees beyond need;
    ``room``, when given, must still fit the pods without them)."""
    kept: list[Victim] = []
    for victim in reversed(chosen):
        gpus = victim.gpus
        own = victim.book is book
        if (
            left_free + gpus <= 0
            and (not own or left_quota + gpus <= 0)
            and (room is None or room.fits_without(victim.task.placement))
        ):
            left_free += gpus
            if own:
                left_quota += gpus
        else:
            kept.append(victim)
    kept.reverse()
    return kept


def within_lenders(victims: list[Victim], book: Book) -> bool:
    """Each lending team stays beyond its guarantee for all but the last of its victims
    (in victim order, which ``victims`` keeps)."""
    taken: dict[int, int] = {}
    last: dict[int, int] = {}
    lenders: dict[int, Book] = {}
    for victim in victims:
        if victim.book is book:
            continue  # the team's own tasks: priority, not reclaim
        index = victim.book.index
        taken[index] = taken.get(index, 0) + victim.gpus
        last[index] = victim.gpus
        lenders[index] = victim.book
    return all(taken[index] - last[index] < lenders[index].borrowed for index in taken)


def preempt_decisions(
    task: Task, book: Book, victims: list[Victim], base: int, policy: Policy
) -> list[Preempt]:
    """The decisions for ``task``'s victims (``base``: its class weight), with their
    reasons and grace (capped at the policy maximum)."""
    grace_for = policy.preemption.grace_for
    # The grace depends only on what the victim asked for, mostly nothing: read once each.
    graces: dict[float | None, float] = {}
    decisions: list[Preempt] = []
    team, key = book.team.name, task.key
    for victim in victims:
        target = victim.task
        asked = target.checkpoint_grace_s
        grace = graces.get(asked)
        if grace is None:
            grace = graces[asked] = grace_for(asked)
        own = victim.book is book
        if own:
            reason = (
                f"{key} (priority {base}) preempts lower-priority {target.key} "
                f"(priority {victim.effective}) within team {team}'s guarantee"
            )
        else:
            reason = (
                f"team {team} reclaims GPUs within its guarantee for {key}: "
                f"{target.key} runs on GPUs borrowed by team {victim.book.team.name}"
            )
        decisions.append(
            Preempt(
                victim=target.key,
                preemptor=key,
                cause=PreemptCause.PRIORITY if own else PreemptCause.RECLAIM,
                grace_s=grace,
                gpus=victim.gpus,
                work_lost_gpu_s=victim.work_lost,
                reason=reason,
            )
        )
    return decisions
