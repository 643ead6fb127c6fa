"""The loop helpers that keep a stopped daemon from running on (Python 3.11's swallowed
cancels)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gpuwarden_common.aio import raise_if_cancelled, run_together, wait_event


async def test_wait_event_returns_true_once_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)

    assert await wait_event(event, 5.0)


async def test_wait_event_returns_false_when_the_time_is_up() -> None:
    assert not await wait_event(asyncio.Event(), 0.01)


async def test_a_cancel_during_wait_event_is_never_lost() -> None:
    task = asyncio.create_task(wait_event(asyncio.Event(), 10.0))
    await asyncio.sleep(0.01)

    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_honours_a_cancel_that_something_swallowed_on_the_way() -> None:
    turns = 0

    async def loop() -> None:
        nonlocal turns
        while True:
            raise_if_cancelled()
            turns += 1
            # what a library's wait_for does on 3.11 when a result races the cancel
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.02)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)


async def test_run_together_raises_what_the_first_failing_sibling_raised() -> None:
    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("broker gone")

    async def waits() -> None:
        await asyncio.sleep(10)

    with pytest.raises(ValueError, match="broker gone"):
        await run_together(fails(), waits())


async def test_after_a_sibling_failed_the_caller_is_not_taken_for_cancelled() -> None:
    async def fails() -> None:
        raise ValueError

    with contextlib.suppress(ValueError):
        await run_together(fails(), asyncio.sleep(10))

    raise_if_cancelled()  # a reconnect loop carries on


async def test_a_session_is_not_started_after_a_cancel_was_swallowed() -> None:
    started = []

    async def session() -> None:
        started.append(True)

    async def loop() -> None:
        # the cancel lands in a library call that swallows it (Python 3.11's wait_for)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(1)
        await run_together(session(), asyncio.sleep(10))

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert started == []
