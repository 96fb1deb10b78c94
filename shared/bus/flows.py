"""Data flows, the same on every bus: written a window at a time, read so many chunks,
each in bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TypeVar

from shared.bus.errors import BusError

T = TypeVar("T")

# Bytes of a flow in flight at once, unconfirmed: a broker bounds what a stream (or a
# channel) takes in before it confirms (JetStream refuses more with "too many requests").
WINDOW_BYTES = 32 * 2**20


def windows(chunks: Sequence[bytes], limit: int = WINDOW_BYTES) -> Iterator[Sequence[bytes]]:
    """``chunks`` in order, in runs of at most ``limit`` bytes (at least one chunk each)."""
    start, size = 0, 0
    for end, chunk in enumerate(chunks):
        if size and size + len(chunk) > limit:
            yield chunks[start:end]
            start, size = end, 0
        size += len(chunk)
    if start < len(chunks):
        yield chunks[start:]


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
