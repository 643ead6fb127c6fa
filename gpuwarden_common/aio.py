"""asyncio helpers that never lose a cancellation.

On Python 3.11, ``asyncio.timeout`` (and ``asyncio.wait_for``) can swallow a cancel that
arrives in the same loop turn as the timeout (CPython gh-102780, fixed in 3.12): a loop that
waits for news with a timeout then goes on running after it was told to stop, and whoever
awaits it hangs. ``asyncio.wait`` with a timeout has no such race: a timeout is a plain
return, a cancel is always a CancelledError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """Wait until ``event`` is set or ``timeout`` seconds pass; True when it was set."""
    raise_if_cancelled()  # a cancel swallowed just before must not turn into a long wait
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


def raise_if_cancelled() -> None:
    """Call at the top of a daemon loop: a cancel requested of this task and swallowed on the
    way by a library's ``wait_for`` (aiomqtt's publish, the Kubernetes client) still counts
    in ``Task.cancelling()``; honour it here rather than loop on after being told to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def run_together(*coros: Coroutine[Any, Any, None]) -> None:
    """Run ``coros`` as sibling tasks until one ends; cancel the others and raise what the
    first one raised. A TaskGroup would do the same but, on Python 3.11, leaves its parent's
    ``cancelling()`` count raised after a child fails, which the reconnect loops that call
    this would take for a request to stop."""
    try:
        raise_if_cancelled()  # a cancel swallowed just before must not start a session
    except asyncio.CancelledError:
        for c in coros:
            c.close()
        raise
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in tasks:
        if t in done and not t.cancelled() and (error := t.exception()) is not None:
            raise error
