"""The contract suite runs unchanged against every bus adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.bus import Bus
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus, delete_namespace
from shared.testing import unique_namespace


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
            await delete_namespace(adapter)
        await adapter.close()
