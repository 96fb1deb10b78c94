"""The hosts' emulated clock lives in the log: a restarted hosts process goes on from
where its events left it, never back to zero."""

from __future__ import annotations

import asyncio

from schemas.vm import CreateVm
from services.hosts.bootstrap import build
from shared.bus.memory import MemoryBus
from shared.client import Client
from shared.runtime import Runtime
from shared.settings import Settings
from shared.testing import running, unique_namespace


async def created_at(client: Client, vm: str) -> float:
    [answer] = await client.send_and_wait(CreateVm(vm=vm, cpu=1, mem_mib=64, host="h1"))
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
