"""Where the brokers differ by nature, the difference is deliberate, documented and held."""

from __future__ import annotations

import pytest

from schemas import Envelope, Message
from shared.bus import Bus, ConsumerSpec, Delivery, Stream
from shared.bus.rabbit import RabbitBus, Unroutable
from shared.testing import eventually
from tests.contract.messages import create_vm, vm_created


async def test_duplicates_in_the_log_are_seen_once(bus: Bus) -> None:
    """A message that reaches the log twice (RabbitMQ has no server-side dedupe; on any
    broker a raw publish can do it) is replayed once and handled once."""
    env = vm_created("twice")
    for _ in range(2):
        await bus.publish_raw(Stream.EVENTS, "vm.twice", env.encode())
    after = vm_created("after")
    await bus.append(after)

    replayed = [e.envelope.id async for e in bus.replay() if e.envelope is not None]
    assert replayed == [env.id, after.id]

    handled: list[Envelope[Message]] = []

    async def handler(e: Envelope[Message], delivery: Delivery) -> None:
        handled.append(e)

    await bus.consume(ConsumerSpec(name="once", stream=Stream.EVENTS, filters=("vm.>",)), handler)
    await eventually(lambda: len(handled) == 2, what="two distinct events")
    assert [e.id for e in handled] == [env.id, after.id]


async def test_command_to_a_target_nobody_declared_is_refused(bus: Bus) -> None:
    """On RabbitMQ a command whose queue no handler ever declared is refused at send time
    (mandatory publish); on NATS and in memory it waits in the work queue."""
    if isinstance(bus, RabbitBus):
        with pytest.raises(Unroutable, match="nothing subscribes"):
            await bus.send(create_vm("orphan"))
        return
    await bus.send(create_vm("orphan"))
    seen: list[Envelope[Message]] = []

    async def handler(e: Envelope[Message], delivery: Delivery) -> None:
        seen.append(e)

    spec = ConsumerSpec(name="late", stream=Stream.COMMANDS, filters=("hosts.>",))
    await bus.consume(spec, handler)
    await eventually(lambda: len(seen) == 1, what="the waiting command")
