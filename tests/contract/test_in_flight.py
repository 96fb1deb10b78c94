"""Consumers that hand over several messages at once (``in_flight``), and commands sent
together (``send_many``): the same promises on every bus."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from schemas import Envelope, Message
from shared.bus import Bus, ConsumerSpec, Delivery, Stream
from shared.bus.rabbit import RabbitBus
from shared.testing import eventually, unique_namespace
from tests.brokers import close_and_delete, rabbitmqctl
from tests.contract.messages import create_vm


def spec(name: str, in_flight: int) -> ConsumerSpec:
    return ConsumerSpec(
        name=name,
        stream=Stream.COMMANDS,
        filters=("hosts.>",),
        max_deliver=3,
        retry_delay=0.01,
        ack_wait=2.0,
        batch=64,
        in_flight=in_flight,
    )


async def declared(bus: Bus, consumer: ConsumerSpec) -> ConsumerSpec:
    """The consumer, made once: commands sent before it runs then wait for it (a broker
    routes a command only to a consumer that exists)."""
    await (await bus.consume(consumer, Overlap())).stop()
    return consumer


class Overlap:
    """Records when each handler starts, and how many run at once."""

    def __init__(self, *, fail_once: uuid.UUID | None = None) -> None:
        self.started: list[uuid.UUID] = []
        self.running = 0
        self.most = 0
        self.fail_once = fail_once

    async def __call__(self, env: Envelope[Message], _delivery: Delivery) -> None:
        self.started.append(env.id)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            # A handler that waits (an append, say): the next ones start meanwhile.
            await asyncio.sleep(0.02)
            if env.id == self.fail_once:
                self.fail_once = None
                raise RuntimeError("failed once")
        finally:
            self.running -= 1


async def test_send_many_queues_commands_in_the_order_given(bus: Bus) -> None:
    ordered = await declared(bus, spec("ordered", 1))
    commands = [create_vm(f"vm{i}") for i in range(50)]
    await bus.send_many(commands)
    seen = Overlap()
    await bus.consume(ordered, seen)
    await eventually(lambda: len(seen.started) == 50, what="fifty commands")
    assert seen.started == [c.id for c in commands]
    assert seen.most == 1


async def test_commands_sent_again_among_new_ones_are_queued_once_each_in_order(
    bus: Bus,
) -> None:
    """An outbox sends what it sent before again after a restart, with what came since
    (on NATS a batch holding a command sent before is refused whole, and then each goes
    on its own): every command is queued once, in the order first given."""
    again = await declared(bus, spec("again", 1))
    commands = [create_vm(f"vm{i}") for i in range(10)]
    last = create_vm("last")
    await bus.send_many(commands[:6])
    await bus.send_many(commands[3:])
    await bus.send_many([last])
    seen = Overlap()
    await bus.consume(again, seen)
    await eventually(lambda: last.id in seen.started, what="the last command")
    assert seen.started == [c.id for c in [*commands, last]]


async def test_a_consumer_hands_over_several_messages_at_once_in_delivery_order(
    bus: Bus,
) -> None:
    """Up to ``in_flight`` handlers run together, started in the order of delivery, and
    each message is handled once."""
    together = await declared(bus, spec("together", 8))
    commands = [create_vm(f"vm{i}") for i in range(40)]
    await bus.send_many(commands)
    seen = Overlap()
    await bus.consume(together, seen)
    await eventually(lambda: len(seen.started) == 40, what="forty commands")
    assert seen.started == [c.id for c in commands]
    assert 1 < seen.most <= 8


async def test_a_message_that_fails_amid_others_comes_again_and_the_rest_once(
    bus: Bus,
) -> None:
    retried = await declared(bus, spec("retried", 6))
    commands = [create_vm(f"vm{i}") for i in range(12)]
    seen = Overlap(fail_once=commands[3].id)
    await bus.send_many(commands)
    await bus.consume(retried, seen)
    await eventually(lambda: len(seen.started) == 13, what="twelve commands and one retry")
    await asyncio.sleep(0.3)
    counts = {c.id: seen.started.count(c.id) for c in commands}
    assert counts == {c.id: 2 if c is commands[3] else 1 for c in commands}


def unacknowledged(queue: str) -> int:
    """Deliveries the broker holds unacknowledged on ``queue``."""
    for line in rabbitmqctl("list_queues", "name", "messages_unacknowledged").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue}")


async def counted(queue: str, expected: int, timeout: float = 15.0) -> int:
    """The queue's unacknowledged count once it is ``expected``, or the last one seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        count = await asyncio.to_thread(unacknowledged, queue)
        if count == expected or asyncio.get_running_loop().time() > deadline:
            return count
        await asyncio.sleep(0.5)


@pytest.mark.broker
async def test_rabbitmq_acknowledges_nothing_still_in_hand(amqp_url: str) -> None:
    """An acknowledgement on RabbitMQ covers every earlier delivery: while the first of
    several delivered together is still in hand, the others' are held back, and all go
    out once it is done. (Deliveries arrive one by one, so a round is tried again until
    its first command was handed over together with the others.)"""
    namespace = unique_namespace()
    bus = RabbitBus(amqp_url, namespace)
    await bus.start()
    release = asyncio.Event()
    started: set[uuid.UUID] = set()
    done: set[uuid.UUID] = set()
    holding: list[uuid.UUID] = []
    firsts: set[uuid.UUID] = set()
    try:
        held = await declared(bus, spec("held", 4))

        async def slow_first(env: Envelope[Message], _delivery: Delivery) -> None:
            started.add(env.id)
            # The others of its delivery start meanwhile, if there are any.
            await asyncio.sleep(0.05)
            if env.id in firsts and len(started - done) > 1:
                holding.append(env.id)
                await release.wait()
            done.add(env.id)

        await bus.consume(held, slow_first)
        queue = f"{namespace}.q.held"
        for round_ in range(5):
            commands = [create_vm(f"r{round_}vm{i}") for i in range(4)]
            firsts.add(commands[0].id)
            await bus.send_many(commands)
            ids = {c.id for c in commands}
            await eventually(
                lambda ids=ids: ids <= done or bool(holding),  # type: ignore[misc]
                what="the round handled, or its first command held",
            )
            if holding:
                break
        assert holding, "no round handed its first command over with the others"
        # The broker's counts lag by its statistics interval (5 s): wait them out.
        assert await counted(queue, 4) == 4
        release.set()
        await eventually(lambda: holding[0] in done, what="the first one")
        assert await counted(queue, 0) == 0
    finally:
        release.set()
        await close_and_delete(bus)
