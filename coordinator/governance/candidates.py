"""Running tasks as preemption candidates, in victim order (:mod:`.victim_order`), as
lists the victim search reads.

Two kinds of list: the borrowed tasks of every team (reclaim victims) and a team's own
tasks (priority victims, ordered a priority level at a time as preemptors reach it). Both
are read by rank (the place in victim order, which stays as victims are taken) and skip
dead ranks (taken, or of a team no longer beyond its guarantee) in amortized constant time,
so many preemptors in one round do not step over the same victims again. Internal to the
engine.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from itertools import accumulate
from operator import attrgetter

from coordinator.governance.books import Book
from coordinator.governance.tasks import Task
from coordinator.governance.victim_order import CandidateOrder, Levels, Victim, admitted_at


class _Skips:
    """The next live rank at or after any rank, over ranks that only ever die (a
    union-find with path halving): stepping over dead ranks costs amortized O(1), however
    many walks pass them."""

    def __init__(self) -> None:
        self._next: list[int] = [0]
        """Per rank, a rank at or after it that was live when last looked at; the last
        entry stands for the end."""

    def grow(self, size: int) -> None:
        """Ranks up to ``size`` exist (all live)."""
        nxt = self._next
        end = len(nxt) - 1
        nxt[end] = end
        nxt.extend(range(end + 1, size + 1))

    def kill(self, rank: int) -> None:
        self._next[rank] = rank + 1

    def find(self, rank: int) -> int:
        nxt = self._next
        if nxt[rank] == rank:
            return rank
        while nxt[rank] != rank:
            nxt[rank] = nxt[nxt[rank]]
            rank = nxt[rank]
        return rank

    def rebuild(self, dead: list[bool]) -> None:
        """From scratch, for a rank that lives again (rare: a team back beyond its
        guarantee within the round)."""
        size = len(dead)
        nxt = list(range(size + 1))
        for rank in range(size - 1, -1, -1):
            if dead[rank]:
                nxt[rank] = nxt[rank + 1]
        self._next = nxt


class CandidateList:
    """Candidates in victim order, read by rank, dead ones skipped; and, built when first
    asked for (many rounds never ask), where each one's GPUs are and what of them is still
    alive on each node."""

    def __init__(self, taken: set[str], key: int) -> None:
        self._taken = taken
        """Keys of the victims taken this round, in any list (a task can be in two: borrowed,
        and in its own team's list)."""
        self.key = key
        """Which list: -1 for the borrowed tasks, else the team's index."""
        self.tasks: list[Task] = []
        self.dead: list[bool] = []
        self._rank_of: dict[str, int] | None = None
        self._on_node: dict[str, list[int]] | None = None
        self._alive_on: dict[str, int] = {}
        self._skips = _Skips()

    def ranked(self) -> int:
        return len(self.tasks)

    def build_next_level(self, below: int) -> bool:
        """Orders more candidates, of priority below ``below``; False when there are none."""
        return False

    def victim_at(self, rank: int) -> Victim:
        raise NotImplementedError

    def next_alive(self, rank: int) -> int:
        """The first live rank at or after ``rank`` among those ordered (``ranked()`` when
        there is none)."""
        return self._skips.find(rank)

    def walk(self, rank: int, below: int) -> Iterator[int]:
        """Live ranks from ``rank`` on, ordering more of the list (below priority
        ``below``) as it is reached."""
        find = self._skips.find
        tasks = self.tasks
        while True:
            rank = find(rank)
            if rank < len(tasks):
                yield rank
                rank += 1
            elif not self.build_next_level(below):
                return

    def rank_of(self, key: str) -> int | None:
        ranks = self._rank_of
        if ranks is None:
            ranks = self._rank_of = {task.key: rank for rank, task in enumerate(self.tasks)}
        return ranks.get(key)

    @property
    def on_node(self) -> Mapping[str, list[int]]:
        """Ranks of the candidates with GPUs on each node, in order."""
        if self._on_node is None:
            self._on_node = {}
            self._index_nodes(0)
        return self._on_node

    @property
    def alive_on(self) -> Mapping[str, int]:
        """GPUs of the live candidates on each node (a view, kept current)."""
        if self._on_node is None:
            self._on_node = {}
            self._index_nodes(0)
        return self._alive_on

    def kill(self, rank: int) -> list[str]:
        """The candidate is taken (or its team no longer lends it): skipped from now on.
        Returns its nodes, whose room changed (none while nodes are not indexed)."""
        if self.dead[rank]:
            return []
        self.dead[rank] = True
        self._skips.kill(rank)
        return self._count(rank, -1)

    def _revive(self, rank: int) -> list[str]:
        """The inverse of :meth:`kill`, for a rank not taken; :meth:`_reindex` once after."""
        if not self.dead[rank] or self.tasks[rank].key in self._taken:
            return []
        self.dead[rank] = False
        return self._count(rank, 1)

    def _reindex(self) -> None:
        self._skips.rebuild(self.dead)

    def _append(self, tasks: list[Task]) -> None:
        start = len(self.tasks)
        self.tasks.extend(tasks)
        self.dead.extend([False] * len(tasks))
        self._skips.grow(len(self.tasks))
        ranks = self._rank_of
        if ranks is not None:
            for rank, task in enumerate(tasks, start):
                ranks[task.key] = rank
        taken = self._taken
        if taken:  # none, when the round's first preemptor makes the list
            for rank, task in enumerate(tasks, start):
                if task.key in taken:
                    self.dead[rank] = True
                    self._skips.kill(rank)
        if self._on_node is not None:
            self._index_nodes(start)

    def _index_nodes(self, start: int) -> None:
        on_node, alive_on, tasks, dead = self._on_node, self._alive_on, self.tasks, self.dead
        assert on_node is not None
        for rank in range(start, len(tasks)):
            for node, gpus in tasks[rank].placement.items():
                if gpus > 0:
                    on_node.setdefault(node, []).append(rank)
                    if not dead[rank]:
                        alive_on[node] = alive_on.get(node, 0) + gpus

    def _count(self, rank: int, sign: int) -> list[str]:
        if self._on_node is None:
            return []
        nodes = []
        alive_on = self._alive_on
        for node, gpus in self.tasks[rank].placement.items():
            if gpus > 0:
                alive_on[node] = alive_on.get(node, 0) + sign * gpus
                nodes.append(node)
        return nodes


class BorrowedVictims(CandidateList):
    """The borrowed tasks of every team, ordered across teams, all at once (a team's tasks
    fill its guarantee highest priority first; those past it are borrowed).

    As in :class:`OwnVictims`, a task is made a candidate only when a preemptor looks at
    it: when a lender's whole cluster is borrowed, the list is thousands of tasks, of which
    a round looks at some (most, when every preemptor makes room with several victims)."""

    def __init__(
        self, books: list[Book], order: CandidateOrder, levels_of: list[Levels], taken: set[str]
    ) -> None:
        super().__init__(taken, -1)
        tasks: list[Task] = []
        owners: list[Book] = []
        effective: list[int] = []
        for book, levels in zip(books, levels_of, strict=True):
            if book.borrowed > 0:
                for level, members in _borrowed_levels(book, levels):
                    tasks.extend(members)
                    owners.extend([book] * len(members))
                    effective.extend([level] * len(members))
        ranked, work = order.order(tasks, effective)
        # What a candidate is made of stays where it was gathered, read through its
        # position: permuting each list into victim order cost more than the few
        # thousand candidates a round makes read.
        self._position = ranked
        self._owners = owners
        self._effective = effective
        self._work = work
        self._made: list[Victim | None] = [None] * len(ranked)
        self._append([tasks[index] for index in ranked])

    def victim_at(self, rank: int) -> Victim:
        victim = self._made[rank]
        if victim is None:
            task, position = self.tasks[rank], self._position[rank]
            victim = self._made[rank] = Victim(
                task,
                task.key,
                self._owners[position],
                task.gpus,
                self._effective[position],
                self._work[position],
                rank,
            )
        return victim

    def kill(self, rank: int) -> list[str]:
        # Taken (or no longer lent): it need not live on. A round takes thousands, and
        # each kept to its end is one more object every garbage collection walks.
        self._made[rank] = None
        return super().kill(rank)

    def lend(self, book: Book, beyond: bool) -> list[str]:
        """The team moved across its guarantee: its borrowed tasks are reclaimable again
        (``beyond``) or no longer. Returns the nodes whose room changed."""
        nodes: list[str] = []
        owners = self._owners
        ranks = [rank for rank, position in enumerate(self._position) if owners[position] is book]
        if beyond:
            for rank in ranks:
                nodes.extend(self._revive(rank))
            self._reindex()
        else:
            for rank in ranks:
                nodes.extend(self.kill(rank))
        return nodes


def _borrowed_levels(book: Book, levels: Levels) -> Iterator[tuple[int, list[Task]]]:
    """The team's borrowed tasks, by effective priority. Whole priority levels fill the
    guarantee at once; only the level that crosses it is ordered task by task, and every
    level below it is borrowed whole."""
    filled = 0
    for effective in reversed(levels.ascending):
        members = levels.tasks[effective]
        if filled > book.guarantee:
            yield effective, members
        elif filled + levels.gpus[effective] <= book.guarantee:
            filled += levels.gpus[effective]
        else:
            yield effective, _past_guarantee(members, book.guarantee - filled)
            filled += levels.gpus[effective]


def _past_guarantee(members: list[Task], room: int) -> list[Task]:
    """The members that do not fit in ``room`` GPUs of the guarantee, earliest admitted
    filling it first (then by key: two stable sorts rather than a tuple for each, as the
    level is often a borrower's whole cluster)."""
    ordered = sorted(members, key=_task_key)
    ordered.sort(key=admitted_at)
    filled = 0
    for position, member in enumerate(ordered):
        filled += member.gpus
        if filled > room:
            return ordered[position:]  # every later one is past it too
    return []


_task_key = attrgetter("key")


class OwnVictims(CandidateList):
    """A team's tasks in victim order (lowest priority first), ordered a level at a time as
    preemptors reach it (a preemptor stops at its own class weight, so the levels above
    are usually never ordered), with the GPUs below any priority for a quick bound.

    A task is made a candidate (:class:`Victim`) only when a preemptor looks at it: most
    are not, and one object for each would be a thousand more that live through the round,
    and more garbage collections."""

    def __init__(self, levels: Levels, book: Book, order: CandidateOrder, taken: set[str]) -> None:
        super().__init__(taken, book.index)
        self._levels = levels
        self._book = book
        self._order = order
        self._built = 0
        self._effective: list[int] = []
        self._work: list[float] = []
        self._made: dict[int, Victim] = {}
        self._cumulative = list(
            accumulate((levels.gpus[level] for level in levels.ascending), initial=0)
        )
        self._counts = list(
            accumulate((len(levels.tasks[level]) for level in levels.ascending), initial=0)
        )

    def gpus_below(self, priority: int) -> int:
        """GPUs of the team's tasks below ``priority``, taken ones included."""
        return self._cumulative[bisect.bisect_left(self._levels.ascending, priority)]

    def ranks_below(self, priority: int) -> int:
        """How many of its tasks are below ``priority``: the ranks a preemptor of that
        class weight may take, once ordered."""
        return self._counts[bisect.bisect_left(self._levels.ascending, priority)]

    def victim_at(self, rank: int) -> Victim:
        victim = self._made.get(rank)
        if victim is None:
            task = self.tasks[rank]
            victim = self._made[rank] = Victim(
                task,
                task.key,
                self._book,
                task.gpus,
                self._effective[rank],
                self._work[rank],
                rank,
                self.key,
            )
        return victim

    def kill(self, rank: int) -> list[str]:
        self._made.pop(rank, None)  # taken: it need not live on
        return super().kill(rank)

    def build_next_level(self, below: int) -> bool:
        """Orders the next priority level's tasks after those ordered, if it is below
        priority ``below`` (no preemptor takes a task of its own priority or above);
        False when none is."""
        ascending = self._levels.ascending
        if self._built == len(ascending) or ascending[self._built] >= below:
            return False
        level = ascending[self._built]
        tasks, work = self._order.order_level(self._levels.tasks[level])
        self._work.extend(work)
        self._effective.extend([level] * len(tasks))
        self._append(tasks)
        self._built += 1
        return True
