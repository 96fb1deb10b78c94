"""Bulk data flows: guest pages move in ordered chunks on a flow's own subject."""

from __future__ import annotations

import asyncio
import os

import pytest

from shared.bus import Bus, BusError


async def test_chunks_arrive_in_order_and_only_their_flow(bus: Bus) -> None:
    """A reader gets its flow's chunks, in order, byte for byte, and not another flow's."""
    chunks = [os.urandom(64 * 1024) for _ in range(8)]
    await bus.put_data("other", [b"not for you"])
    await bus.put_data("mig-1", chunks[:5])
    await bus.put_data("mig-1", chunks[5:])
    got = [chunk async for chunk in bus.read_data("mig-1", len(chunks), timeout=10)]
    assert got == chunks


async def test_reader_may_start_before_the_writer(bus: Bus) -> None:
    """Chunks written while the reader is already waiting still reach it."""

    async def read() -> list[bytes]:
        return [chunk async for chunk in bus.read_data("late", 2, timeout=10)]

    reading = asyncio.create_task(read())
    await asyncio.sleep(0.3)
    assert not reading.done()
    await bus.put_data("late", [b"a", b"b"])
    assert await reading == [b"a", b"b"]


async def test_missing_chunks_fail_clearly(bus: Bus) -> None:
    """Waiting for more chunks than were written fails with the flow's name, not a hang."""
    await bus.put_data("short", [b"only one"])
    with pytest.raises(BusError, match="short: chunk 2 of 2 did not come"):
        _ = [chunk async for chunk in bus.read_data("short", 2, timeout=1)]
