"""Supervised loops ride out a broker that is away for a while, and give up on a step
that keeps failing for any other reason."""

from __future__ import annotations

import asyncio

import pytest

from shared.bus import BusUnavailable
from shared.loops import BROKER_GRACE_SECONDS, MAX_FAILURES, Loop, LoopFailed, LoopStats, supervise


class Clock:
    """Emulated time: each pause moves it on, and nothing really sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def failing(error: Exception, times: int, done: asyncio.Event) -> Loop:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error
        done.set()

    return Loop("step", step, every=1.0)


async def run(loop: Loop, clock: Clock, done: asyncio.Event) -> LoopStats:
    stats = LoopStats()

    async def run_step(loop: Loop) -> None:
        await loop.step()

    task = asyncio.create_task(supervise(loop, run_step, stats, clock.sleep, clock))
    finished, _ = await asyncio.wait(
        {task, asyncio.create_task(done.wait())}, timeout=10, return_when="FIRST_COMPLETED"
    )
    task.cancel()
    if task in finished and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    return stats


async def test_a_loop_waits_out_a_broker_that_is_away_for_seconds() -> None:
    """Twice as many failures as would stop the service, all of them the broker away for
    less than the grace: the loop goes on once it is back."""
    clock, done = Clock(), asyncio.Event()
    stats = await run(failing(BusUnavailable("restarting"), 2 * MAX_FAILURES, done), clock, done)
    assert done.is_set()
    assert stats.failures == 2 * MAX_FAILURES
    assert clock.now < BROKER_GRACE_SECONDS


async def test_a_broker_away_beyond_the_grace_stops_the_loop() -> None:
    clock, done = Clock(), asyncio.Event()
    with pytest.raises(LoopFailed, match="restarting"):
        await run(failing(BusUnavailable("restarting"), 10_000, done), clock, done)
    assert clock.now >= BROKER_GRACE_SECONDS


async def test_a_step_that_keeps_failing_otherwise_stops_the_loop() -> None:
    clock, done = Clock(), asyncio.Event()
    with pytest.raises(LoopFailed, match=f"failed {MAX_FAILURES} times"):
        await run(failing(RuntimeError("broken"), MAX_FAILURES, done), clock, done)
