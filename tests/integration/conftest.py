"""Fixtures the full-stack tests share: each broker in turn, and a client on it in a
namespace of its own that is removed afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.bus.factory import bus_from_url
from shared.capacity import PoolReplay, pool_from_log
from shared.client import Client
from shared.testing import unique_namespace
from tests.brokers import drop_rabbitmq_namespace


@pytest.fixture(params=["nats", "rabbitmq"])
def bus_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{'amqp' if request.param == 'rabbitmq' else 'nats'}_url")
    return url


@pytest.fixture
async def client(bus_url: str) -> AsyncIterator[Client]:
    """A client in a namespace of its own. Whatever the scenario, an independent replay
    of its log at the end finds no host over capacity and nothing counted twice."""
    namespace = unique_namespace()
    bus = bus_from_url(bus_url, namespace)
    await bus.start()
    pool: PoolReplay | None = None
    try:
        yield Client(bus, producer="test")
        pool = await pool_from_log(bus)
    finally:
        await bus.close()
        if bus_url.startswith("amqp"):
            await asyncio.to_thread(drop_rabbitmq_namespace, bus_url, namespace)
    assert pool.over == [], pool.over[:5]
    assert pool.twice == [], pool.twice[:5]
