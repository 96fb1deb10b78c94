"""Fixtures the full-stack tests share: each broker in turn, and a client on it in a
namespace of its own that is removed afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.bus.factory import bus_from_url
from shared.client import Client
from shared.testing import unique_namespace
from tests.brokers import drop_rabbitmq_namespace


@pytest.fixture(params=["nats", "rabbitmq"])
def bus_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{'amqp' if request.param == 'rabbitmq' else 'nats'}_url")
    return url


@pytest.fixture
async def client(bus_url: str) -> AsyncIterator[Client]:
    namespace = unique_namespace()
    bus = bus_from_url(bus_url, namespace)
    await bus.start()
    try:
        yield Client(bus, producer="test")
    finally:
        await bus.close()
        if bus_url.startswith("amqp"):
            await asyncio.to_thread(drop_rabbitmq_namespace, bus_url, namespace)
