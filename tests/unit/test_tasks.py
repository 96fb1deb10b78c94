"""cancel_and_wait: a task that swallows a cancellation is stopped all the same."""

from __future__ import annotations

import asyncio

import pytest

from shared.tasks import cancel_and_wait


async def test_a_task_that_swallows_the_first_cancellation_is_cancelled_again() -> None:
    """As nats-py's fetch does on Python 3.11 when a message arrives with the cancel:
    the task goes on waiting; it ends only because it is cancelled again."""
    swallowed = 0

    async def follow() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    task = asyncio.create_task(follow())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task)
    assert task.cancelled()
    assert swallowed == 1


async def test_what_the_task_failed_with_is_raised() -> None:
    async def fail() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel_and_wait(task)


async def test_the_caller_can_still_be_bounded() -> None:
    """A task that never ends does not hold its stopper past the stopper's own timeout."""

    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await cancel_and_wait(task)
    assert not task.done()
    # Left behind, as a bounded stop leaves it; let it end so the test's loop closes cleanly.
    released.set()
    task.cancel()
    await asyncio.wait([task])
