"""Reading a data flow, the same on every bus: so many chunks, each in bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from shared.bus.errors import BusError

T = TypeVar("T")


async def first_chunks(
    source: AsyncIterator[T], flow: str, count: int, timeout: float
) -> AsyncIterator[T]:
    """The first ``count`` items of ``source``; a chunk that does not come within
    ``timeout`` fails the read with the flow's name, never a hang."""
    for seq in range(1, count + 1):
        try:
            async with asyncio.timeout(timeout):
                item = await anext(source)
        except (TimeoutError, StopAsyncIteration):
            raise BusError(f"data flow {flow}: chunk {seq} of {count} did not come") from None
        yield item
