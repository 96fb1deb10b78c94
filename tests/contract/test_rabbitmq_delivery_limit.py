"""RabbitMQ's own safety net: a message that never gets an outcome is dead-lettered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from schemas import Envelope, Message
from shared.bus import ConsumerSpec, Delivery, Stream
from shared.bus.rabbit import RabbitBus
from shared.testing import poll, unique_namespace
from tests.brokers import close_and_delete
from tests.contract.messages import vm_created

pytestmark = pytest.mark.broker


@pytest.fixture
async def rabbit(amqp_url: str) -> AsyncIterator[RabbitBus]:
    bus = RabbitBus(amqp_url, unique_namespace())
    await bus.start()
    try:
        yield bus
    finally:
        await close_and_delete(bus)


async def test_broker_dead_letters_a_message_returned_past_its_delivery_limit(
    rabbit: RabbitBus,
) -> None:
    """A consumer that dies before settling a message (here: returned unsettled again and
    again) does not loop forever: past the queue's delivery limit the broker moves the
    message to the dead-letter stream, with the reason."""

    async def never(env: Envelope[Message], delivery: Delivery) -> None:
        raise AssertionError("not consumed through vplane in this test")

    spec = ConsumerSpec(name="crashy", stream=Stream.EVENTS, filters=("vm.>",), max_deliver=2)
    await (await rabbit.consume(spec, never)).stop()
    event = vm_created("crash")
    await rabbit.append(event)

    channel = await rabbit.conn.channel()
    queue = await channel.get_queue(rabbit.topology.consumer_queue("crashy"), ensure=False)
    returned = 0
    for _ in range(10):
        message = await queue.get(fail=False, timeout=5)
        if message is None:
            break
        await message.nack(requeue=True)
        returned += 1
    await channel.close()

    dead = await poll(lambda: rabbit.dead_letters("crashy"), bool, what="a dead letter")
    assert 2 <= returned <= 3
    assert [d.data for d in dead] == [event.encode()]
    assert dead[0].reason == "broker: delivery_limit"
