"""Guest memory through the running hosts service on each broker: share, export, import,
verified by checksum. Each VM is created in room reserved for it first, as its
scheduler would have."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from schemas import Command
from schemas.memory import ExportPages, GetVmMemory, ImportPages, PagePair, SharePages, VmMemory
from schemas.vm import CreateVm, MemoryMode, StunVm
from shared.client import Client
from tests.integration.stack import start_ready, stop_all
from tests.reserving import create

pytestmark = [pytest.mark.broker, pytest.mark.integration]


@pytest.fixture
async def stack(client: Client, bus_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    env = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.2",
    }
    procs = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        yield client
    finally:
        assert await stop_all(procs) == [0]


async def answer(client: Client, cmd: Command) -> Any:
    """The data of the one event that answers ``cmd``."""
    [event] = await client.send_and_wait(cmd, timeout=30)
    return event.data


async def memory(client: Client, vm: str) -> VmMemory:
    reply = await client.query(GetVmMemory(vm=vm))
    assert isinstance(reply, VmMemory)
    return reply


async def test_pages_move_between_hosts_byte_for_byte(stack: Client) -> None:
    """A stunned VM's pages exported on h1 and imported into a VM of the same size on h2
    give the destination the source's checksum."""
    client = stack
    for vm, host, seed in (("src", "h1", 1), ("dst", "h2", 2)):
        created = await create(
            client,
            CreateVm(vm=vm, cpu=1, mem_mib=32, host=host, seed=seed, memory_mode=MemoryMode.FULL),
            timeout=30,
        )
        assert created.type == "VmCreated", created.data
    await answer(client, StunVm(vm="src", host="h1"))
    exported = await answer(client, ExportPages(host="h1", vm="src", flow="mig-1"))
    assert exported.type_name() == "PagesExported", exported
    await answer(client, StunVm(vm="dst", host="h2"))
    imported = await answer(
        client, ImportPages(host="h2", vm="dst", flow="mig-1", batches=exported.batches)
    )
    assert imported.type_name() == "PagesImported", imported
    src, dst = await memory(client, "src"), await memory(client, "dst")
    assert src.checksum == dst.checksum == imported.checksum


async def test_sharing_through_the_service(stack: Client) -> None:
    """Sharing equal pages is answered with PagesShared; unequal ones are refused."""
    client = stack
    for vm, seed in (("a", 3), ("b", 3)):
        created = await create(
            client,
            CreateVm(
                vm=vm,
                cpu=1,
                mem_mib=16,
                host="h1",
                seed=seed,
                memory_mode=MemoryMode.FULL,
                power_on=False,
            ),
            timeout=30,
        )
        assert created.type == "VmCreated", created.data
    # Same seed, same template: page 0 of both is the same content.
    shared = await answer(
        client,
        SharePages(
            host="h1", pairs=[PagePair(vm_a="a", page_a=p, vm_b="b", page_b=p) for p in range(64)]
        ),
    )
    assert shared.type_name() == "PagesShared", shared
    assert (await memory(client, "b")).shared_pages >= 64
