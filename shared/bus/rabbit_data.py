"""Data flows on RabbitMQ: a queue per flow, read once by the flow's one reader."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractRobustConnection

from shared.bus.flows import first_chunks
from shared.bus.rabbit_topology import Topology


async def read_flow(
    conn: AbstractRobustConnection, topology: Topology, flow: str, count: int, timeout: float
) -> AsyncIterator[bytes]:
    """The first ``count`` chunks of a flow, in order; the flow's queue goes once read."""
    channel = await conn.channel()
    try:
        await channel.set_qos(prefetch_count=16)
        name = await topology.declare_data(channel, flow)
        queue = await channel.get_queue(name, ensure=False)
        async with queue.iterator() as messages:
            async for message in first_chunks(messages, flow, count, timeout):
                await message.ack()
                yield message.body
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
