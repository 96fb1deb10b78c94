"""The contract suite runs unchanged against every bus adapter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from shared.bus import Bus
from shared.bus.factory import bus_from_url
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.testing import unique_namespace
from tests.brokers import close_and_delete, drop_rabbitmq_namespace
from tests.unit.stack import Connect


@pytest.fixture(
    params=[
        "memory",
        pytest.param("nats", marks=pytest.mark.broker),
        pytest.param("rabbitmq", marks=pytest.mark.broker),
    ]
)
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    namespace = unique_namespace()
    adapter: Bus
    if request.param == "memory":
        adapter = MemoryBus(namespace)
    elif request.param == "nats":
        adapter = NatsBus(request.getfixturevalue("nats_url"), namespace)
    else:
        adapter = RabbitBus(request.getfixturevalue("amqp_url"), namespace)
    await adapter.start()
    try:
        yield adapter
    finally:
        if isinstance(adapter, RabbitBus):
            await close_and_delete(adapter)
        else:
            await adapter.close()


@dataclass(frozen=True)
class Broker:
    """Where the services of a test stack meet: ``connect`` opens a connection (None: one
    in-memory bus for all) in ``namespace``, the test's own."""

    name: str
    namespace: str
    connect: Connect | None


@pytest.fixture(
    params=[
        "memory",
        pytest.param("nats", marks=pytest.mark.broker),
        pytest.param("rabbitmq", marks=pytest.mark.broker),
    ]
)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    namespace = unique_namespace()
    if request.param == "memory":
        yield Broker("memory", namespace, None)
        return
    url: str = request.getfixturevalue("amqp_url" if request.param == "rabbitmq" else "nats_url")
    try:
        yield Broker(request.param, namespace, lambda ns: bus_from_url(url, ns))
    finally:
        if request.param == "rabbitmq":
            await asyncio.to_thread(drop_rabbitmq_namespace, url, namespace)
