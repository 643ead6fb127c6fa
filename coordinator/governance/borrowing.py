"""The borrowing pass's order and words: who borrows idle GPUs next, and why one cannot.

Pure helpers of :mod:`.engine`'s second pass (the pass itself admits, so it stays there).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

from coordinator.governance.books import Book
from coordinator.governance.fairshare import fair_share_key
from coordinator.governance.tasks import Task


def fair_share_order(
    borrowers: list[Task], book_of: Mapping[str, Book], books: Sequence[Book]
) -> Iterator[Task]:
    """Borrowers in fair-share order: next, the team with the least borrowed per weight.
    The key is read again after each task, as an admission moves the team back."""
    queues: dict[int, deque[Task]] = {}
    for task in borrowers:
        queues.setdefault(book_of[task.namespace].index, deque()).append(task)
    heap = [_share_key(books[index]) for index in queues]
    heapq.heapify(heap)
    while heap:
        index = heapq.heappop(heap)[2]
        pending = queues[index]
        book = books[index]
        while pending:
            used = book.used
            yield pending.popleft()
            # Only this team's admission changes its key (no other team admits meanwhile,
            # and keys are unique by team index): while nothing was admitted the team is
            # still the least served, so it goes on without a trip through the heap.
            if pending and book.used != used:
                heapq.heappush(heap, _share_key(book))
                break


def _share_key(book: Book) -> tuple[int, float, int]:
    return fair_share_key(book.borrowed, book.team.fair_share_weight, book.index)


def cannot_borrow(book: Book) -> str:
    why = (
        f"lending: {book.team.lending}"
        if not book.team.lending.borrows
        else "its borrow limit is 0 GPUs"
    )
    return (
        f"team {book.team.name} holds {book.used} of its {book.guarantee} guaranteed "
        f"GPUs and cannot borrow ({why})"
    )


def borrow_refusal(book: Book, demand: int, idle: int) -> str | None:
    """Why a task of ``book`` cannot borrow ``demand`` GPUs with ``idle`` GPUs idle; None
    when it may."""
    borrowed_after = book.used + demand - book.guarantee
    if borrowed_after > book.borrow_limit:
        return (
            f"would borrow {borrowed_after} GPUs, over team {book.team.name}'s borrow "
            f"limit of {book.borrow_limit}"
        )
    if demand > idle:
        return (
            f"team {book.team.name} is at its guarantee ({book.guarantee} GPUs) and only "
            f"{max(0, idle)} idle GPUs can be borrowed, {demand} needed"
        )
    return None
