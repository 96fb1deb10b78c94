"""Atomic appends as readers and rival writers see them, on every bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from schemas import Envelope, Message
from shared.bus import AppendResult, Bus, ConcurrencyError, Delivery, Logged, Stream
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.testing import eventually
from tests.contract.messages import vm_created
from tests.contract.test_consumers import Recorder, spec


@contextlib.asynccontextmanager
async def second_bus(bus: Bus) -> AsyncIterator[Bus]:
    """Another client of the same log: its own connection and its own view of it."""
    if not isinstance(bus, NatsBus | RabbitBus):
        yield bus
        return
    other = type(bus)(bus.url, bus.namespace)
    await other.start()
    try:
        yield other
    finally:
        await other.close()
        if isinstance(bus, RabbitBus) and isinstance(other, RabbitBus):
            # So that the test's clean-up removes the queues the other client made.
            bus.topology.declared |= other.topology.declared


def names(entries: list[Logged]) -> list[str]:
    return [e.envelope.data.vm for e in entries if e.envelope is not None]  # type: ignore[attr-defined]


async def attempt(bus: Bus, name: str, version: int) -> list[AppendResult] | None:
    """A batch guarded by the pool's version; None when the log refused it."""
    try:
        return await bus.append_batch([vm_created("pool"), vm_created(name)], expected={0: version})
    except ConcurrencyError:
        return None


async def test_rival_conditional_batches_on_one_aggregate_one_wins(bus: Bus) -> None:
    """Two writers append a batch at the same expected version of one aggregate, again
    and again: each time exactly one lands, the other gets ConcurrencyError, and the
    log holds the winners' events only, every batch whole."""
    await bus.append(vm_created("pool"))
    async with second_bus(bus) as other:
        writers = [bus, other]
        for round_ in range(8):
            version = await bus.version("vm/pool")
            assert await other.version("vm/pool") == version

            outcomes = await asyncio.gather(
                *(attempt(b, f"r{round_}-w{i}", version) for i, b in enumerate(writers))
            )
            winners = [o for o in outcomes if o is not None]
            assert len(winners) == 1, f"round {round_}: {outcomes}"
            assert await bus.version("vm/pool") == winners[0][0].seq
            assert await other.version("vm/pool") == winners[0][0].seq
    logged = [e async for e in bus.replay()]
    assert names(logged)[0] == "pool"
    pairs = names(logged)[1:]
    assert len(pairs) == 16
    assert pairs[::2] == ["pool"] * 8
    assert all(name.startswith("r") for name in pairs[1::2])


async def test_no_reader_sees_a_refused_batch(bus: Bus) -> None:
    """A conditional batch the log refused is seen by no reader of another client: not
    a watcher that was there, not a durable consumer, not one that starts later, not a
    replay, not a watcher that starts later from the beginning."""
    async with second_bus(bus) as other:
        live: list[Logged] = []

        async def on_event(entry: Logged) -> None:
            live.append(entry)

        await other.watch(Stream.EVENTS, ("vm.>",), on_event)
        consumed = Recorder()
        await other.consume(spec("refused"), consumed)
        first = await bus.append(vm_created("a"))
        with pytest.raises(ConcurrencyError):
            # Ahead of the log: no writer can hold this version yet.
            await bus.append_batch(
                [vm_created("x"), vm_created("a")], expected={1: first.seq + 10_000}
            )
        taken = await bus.append_batch([vm_created("b"), vm_created("a")], expected={1: first.seq})
        wanted = ["a", "b", "a"]
        await eventually(lambda: len(live) >= 3 and len(consumed.seen) >= 3, what="3 events")
        late: list[Logged] = []

        async def on_late(entry: Logged) -> None:
            late.append(entry)

        await other.watch(Stream.EVENTS, ("vm.>",), on_late, from_seq=1)
        backfilled = Recorder()
        await other.consume(spec("refused-late"), backfilled)
        await eventually(
            lambda: len(late) >= 3 and len(backfilled.seen) >= 3, what="3 events from the start"
        )
        replayed = [e async for e in other.replay()]
        assert names(live) == names(late) == names(replayed) == wanted
        assert [e.data.vm for e in consumed.seen] == wanted  # type: ignore[attr-defined]
        assert [e.data.vm for e in backfilled.seen] == wanted  # type: ignore[attr-defined]
        assert [e.seq for e in replayed] == [first.seq, taken[0].seq, taken[1].seq]
        assert [e.seq for e in late] == [e.seq for e in replayed]
        assert await other.last_seq() == taken[1].seq
        assert await other.version("vm/x") == 0


async def test_a_batch_over_several_aggregates_reaches_each_reader_once(bus: Bus) -> None:
    """Each reader gets the events of a batch its filters select, once, in order, and
    nothing else of it."""
    only_b: list[Envelope[Message]] = []

    async def on_b(env: Envelope[Message], delivery: Delivery) -> None:
        only_b.append(env)

    watched: list[Logged] = []

    async def on_event(entry: Logged) -> None:
        watched.append(entry)

    await bus.consume(spec("only-b", filters=("vm.b",)), on_b)
    await bus.watch(Stream.EVENTS, ("vm.c", "vm.a"), on_event)
    envs = [vm_created(vm) for vm in ("a", "b", "c", "b", "a")]
    results = await bus.append_batch(envs)
    await eventually(lambda: len(only_b) >= 2 and len(watched) >= 3, what="selected events")
    assert [e.id for e in only_b] == [envs[1].id, envs[3].id]
    assert names(watched) == ["a", "c", "a"]
    assert [e.seq for e in watched] == [results[0].seq, results[2].seq, results[4].seq]
    filtered = [e async for e in bus.replay(filters=("vm.b",))]
    assert [e.seq for e in filtered] == [results[1].seq, results[3].seq]


async def test_reading_from_the_middle_of_a_batch(bus: Bus) -> None:
    """A sequence inside a batch is a place to start: replay and watch begin there."""
    envs = [vm_created(f"vm{i}") for i in range(4)]
    results = await bus.append_batch(envs)
    tail = [e async for e in bus.replay(from_seq=results[2].seq)]
    assert names(tail) == ["vm2", "vm3"]
    seen: list[Logged] = []

    async def on_event(entry: Logged) -> None:
        seen.append(entry)

    await bus.watch(Stream.EVENTS, (), on_event, from_seq=results[1].seq + 1)
    await bus.append(vm_created("after"))
    await eventually(lambda: len(seen) >= 3, what="events from the middle of the batch")
    assert names(seen) == ["vm2", "vm3", "after"]
