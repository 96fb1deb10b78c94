"""The test kit: what tests and harnesses need to wait on a bus without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from shared.runtime import Runtime

T = TypeVar("T")


def unique_namespace(prefix: str = "t") -> str:
    """A namespace of its own for one test, so runs never see each other's streams."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def eventually(
    check: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``check()`` holds, polling briefly; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def poll(
    fetch: Callable[[], Awaitable[T]],
    ok: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Call ``fetch`` until its value satisfies ``ok``, and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(runtime: Runtime, timeout: float = 5.0) -> AsyncIterator[asyncio.Event]:
    """Run a service in this process until the block ends (setting the event stops it)."""
    stop = asyncio.Event()
    task = asyncio.create_task(runtime.run(stop))
    await asyncio.wait_for(runtime.ready.wait(), timeout)
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout)
