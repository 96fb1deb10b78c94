"""Durable consumers: explicit ack, resumption, bounded redelivery and dead letters."""

from __future__ import annotations

import json

from schemas import Envelope, Message
from schemas.envelope import MAX_ENVELOPE_BYTES
from shared.bus import Bus, ConsumerSpec, Delivery, PoisonMessage, Stream
from shared.testing import eventually, poll
from tests.contract.messages import create_vm, vm_created


def spec(name: str = "c1", **kw: object) -> ConsumerSpec:
    defaults: dict[str, object] = {
        "stream": Stream.EVENTS,
        "filters": ("vm.>",),
        "max_deliver": 3,
        "retry_delay": 0.01,
        "ack_wait": 5.0,
    }
    defaults.update(kw)
    return ConsumerSpec(name=name, **defaults)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Envelope[Message]] = []
        self.deliveries: list[Delivery] = []

    async def __call__(self, env: Envelope[Message], delivery: Delivery) -> None:
        self.seen.append(env)
        self.deliveries.append(delivery)


async def test_consumer_receives_events_in_order(bus: Bus) -> None:
    """A durable consumer gets every matching event once, in log order."""
    envs = [vm_created(f"vm{i}") for i in range(10)]
    for env in envs:
        await bus.append(env)
    rec = Recorder()
    await bus.consume(spec(), rec)
    await eventually(lambda: len(rec.seen) == 10, what="10 events")
    assert [e.id for e in rec.seen] == [e.id for e in envs]
    assert all(d.attempt == 1 for d in rec.deliveries)


async def test_durable_consumer_resumes_after_acknowledged(bus: Bus) -> None:
    """A consumer stopped and started again under the same name does not see acked events again."""
    rec = Recorder()
    sub = await bus.consume(spec("resume"), rec)
    await bus.append(vm_created("a"))
    await eventually(lambda: len(rec.seen) == 1, what="first event")
    await sub.stop()
    await bus.append(vm_created("b"))
    rec2 = Recorder()
    await bus.consume(spec("resume"), rec2)
    await eventually(lambda: len(rec2.seen) == 1, what="event appended while stopped")
    assert rec2.seen[0].data.vm == "b"  # type: ignore[attr-defined]


async def test_bad_bytes_are_dead_lettered_and_consumer_moves_on(bus: Bus) -> None:
    """Undecodable, invalid, unknown and oversized messages go to the dead-letter subject
    with their reason and original bytes; the next good message is still handled."""
    good = vm_created("after")
    bad = {
        b"\xff\x00 not json": "undecodable",
        b"[1, 2, 3]": "invalid",
        json.dumps({"type": "NoSuchType", "data": {}}).encode(): "unknown-type",
        json.dumps({**json.loads(good.encode()), "data": {"vm": 7}}).encode(): "invalid",
        b"{" + b" " * MAX_ENVELOPE_BYTES + b"}": "oversized",
    }
    for raw in bad:
        await bus.publish_raw(Stream.EVENTS, "vm.junk", raw)
    await bus.append(good)
    rec = Recorder()
    await bus.consume(spec("dlq"), rec)
    await eventually(lambda: len(rec.seen) == 1, what="the good event")
    assert rec.seen[0].id == good.id
    dead = await bus.dead_letters("dlq")
    assert [d.data for d in dead] == list(bad)
    assert [d.reason.split(":")[0] for d in dead] == list(bad.values())
    assert all(d.delivery_count == 1 and d.subject.endswith(".vm.junk") for d in dead)


async def test_failing_handler_is_retried_then_dead_lettered(bus: Bus) -> None:
    """A handler that keeps failing gets max_deliver attempts, then the message is
    dead-lettered with the reason and the delivery count; the next message is handled."""
    attempts: list[int] = []
    handled: list[str] = []

    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        if env.data.vm == "bad":  # type: ignore[attr-defined]
            attempts.append(delivery.attempt)
            raise RuntimeError("boom")
        handled.append(env.data.vm)  # type: ignore[attr-defined]

    await bus.append(vm_created("bad"))
    await bus.append(vm_created("good"))
    await bus.consume(spec("retry", max_deliver=3), handler)
    await eventually(lambda: handled == ["good"], what="the good event")
    dead = await poll(lambda: bus.dead_letters("retry"), bool, what="a dead letter")
    assert attempts == [1, 2, 3]
    assert len(dead) == 1
    assert dead[0].delivery_count == 3
    assert dead[0].reason == "handler-failed: RuntimeError: boom"


async def test_handler_that_fails_once_succeeds_on_redelivery(bus: Bus) -> None:
    """A transient failure is retried and the message handled; nothing is dead-lettered."""
    attempts: list[int] = []

    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise ConnectionError("transient")

    await bus.append(vm_created())
    await bus.consume(spec("flaky"), handler)
    await eventually(lambda: attempts == [1, 2], what="a second attempt")
    assert await bus.dead_letters("flaky") == []


async def test_poison_message_is_dead_lettered_at_once(bus: Bus) -> None:
    """A handler raising PoisonMessage sends the message to dead letters without retrying."""
    attempts: list[int] = []

    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        raise PoisonMessage("can never succeed")

    await bus.append(vm_created())
    await bus.consume(spec("poison"), handler)
    dead = await poll(lambda: bus.dead_letters("poison"), bool, what="a dead letter")
    assert attempts == [1]
    assert [d.reason for d in dead] == ["poison: can never succeed"]


async def test_command_waits_for_a_handler_that_is_not_running(bus: Bus) -> None:
    """A command sent while its handler is down is delivered when the handler starts
    again, and once acknowledged it is not delivered again."""
    cmds = spec("cmds", stream=Stream.COMMANDS, filters=("hosts.>",))
    await (await bus.consume(cmds, Recorder())).stop()
    cmd = create_vm("later")
    await bus.send(cmd)
    rec = Recorder()
    sub = await bus.consume(cmds, rec)
    await eventually(lambda: len(rec.seen) == 1, what="the queued command")
    assert rec.seen[0] == cmd
    await sub.stop()
    rec2 = Recorder()
    await bus.consume(cmds, rec2)
    await bus.send(create_vm("next"))
    await eventually(lambda: len(rec2.seen) == 1, what="the next command")
    assert rec2.seen[0].data.vm == "next"  # type: ignore[attr-defined]
