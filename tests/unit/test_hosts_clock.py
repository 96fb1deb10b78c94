"""The hosts' emulated clock lives in the log: a restarted hosts process goes on from
where its events left it, never back to zero."""

from __future__ import annotations

import asyncio

import pytest

from schemas import Envelope, Message
from schemas.vm import CreateVm
from services.hosts import handlers
from services.hosts.bootstrap import build
from shared.bus import ConsumerSpec, Delivery, Stream
from shared.bus.memory import MemoryBus
from shared.client import Client
from shared.runtime import Runtime
from shared.settings import Settings
from shared.testing import eventually, running, unique_namespace
from tests.reserving import create


async def created_at(client: Client, vm: str) -> float:
    answer = await create(client, CreateVm(vm=vm, cpu=1, mem_mib=64, host="h1"))
    assert answer.type == "VmCreated", answer
    return answer.sim_time


async def test_a_restarted_hosts_process_continues_the_emulated_clock() -> None:
    """Events appended after a restart carry an emulated time no earlier than the last
    one the process appended before it."""
    bus = MemoryBus(unique_namespace())
    settings = Settings.from_env({}, hosts=1, tick_seconds=0.01, speed=10.0)
    client = Client(bus, producer="test")
    async with running(Runtime(build(settings), bus, "i1")):
        await asyncio.sleep(0.3)
        before = await created_at(client, "a")
    assert before > 0
    async with running(Runtime(build(settings), bus, "i2")):
        after = await created_at(client, "b")
    assert after >= before


async def test_a_restarted_hosts_process_repeats_no_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks that only sent telemetry (no event of theirs in the log) are not repeated
    after a restart: the process goes on after the latest clock lease in the log, so a
    tick and its emulated time (which name contention episodes) stay unique."""
    monkeypatch.setattr(handlers, "LEASE_TICKS", 5)
    bus = MemoryBus(unique_namespace())
    settings = Settings.from_env({}, hosts=1, tick_seconds=0.01, speed=10.0)
    samples: list[Envelope[Message]] = []

    async def on_sample(env: Envelope[Message], _delivery: Delivery) -> None:
        samples.append(env)

    await bus.start()
    await bus.consume(ConsumerSpec("ticks", Stream.TELEMETRY, ("host.>",)), on_sample)
    async with running(Runtime(build(settings), bus, "i1")):
        await eventually(lambda: len(samples) >= 30, what="30 ticks")
    before = len(samples)
    async with running(Runtime(build(settings), bus, "i2")):
        # The process's own bus closed with it, and this consumer with it: again.
        await bus.consume(ConsumerSpec("ticks", Stream.TELEMETRY, ("host.>",)), on_sample)
        await eventually(lambda: len(samples) >= before + 5, what="5 ticks after the restart")
    ticks = [e.data.tick for e in samples]  # type: ignore[attr-defined]
    times = [e.sim_time for e in samples]
    assert ticks[before] > max(ticks[:before]), (ticks[before - 2 :], "repeated")
    assert times == sorted(times)
    assert len(set(ticks)) == len(ticks)
    leases = [e async for e in bus.replay(filters=("clock.>",))]
    # One lease per five ticks, not one per tick.
    assert 30 // 5 <= len(leases) <= len(samples) // 5 + 2
