"""A page import waiting for its data flow does not hold up queries."""

from __future__ import annotations

import asyncio
import time

from schemas import Envelope
from schemas.host import HostRegistered
from schemas.memory import ExportPages, ImportPages, PagesImported
from schemas.queries import HostList, ListHosts
from schemas.vm import CreateVm, MemoryMode, VmCreated
from services.hosts.bootstrap import build
from services.hosts.transfers import export_pages
from shared.bus.memory import MemoryBus
from shared.client import Client
from shared.runtime import Runtime
from shared.settings import Settings
from shared.testing import running
from tests.reserving import create
from tests.unit.test_hosts_machine import Harness

BATCH = 1024  # pages a chunk; 16 MiB is four chunks


async def test_an_import_waiting_for_its_flow_does_not_hold_up_queries() -> None:
    """The import's flow is not there yet; meanwhile `vplane hosts` is answered at once.
    Once the pages are exported to the flow, the import completes."""
    bus = MemoryBus()
    client = Client(bus, producer="test")
    async with running(Runtime(build(Settings.from_env({}, hosts=1)), bus, "i1")):
        for name in ("other", "dst"):
            vm = CreateVm(vm=name, cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL)
            created = await create(client, vm)
            assert isinstance(created.data, VmCreated)
        waiting = asyncio.create_task(
            client.send_and_wait(ImportPages(host="h1", vm="dst", flow="late", batches=4))
        )
        await asyncio.sleep(0.2)  # the import is now reading its flow
        started = time.monotonic()
        reply = await client.query(ListHosts(), timeout=2)
        assert isinstance(reply, HostList)
        assert [h.vms for h in reply.hosts] == [2]
        assert time.monotonic() - started < 2
        assert not waiting.done()
        # Another process (here: the test) fills the flow; the import goes on.
        await bus.put_data("late", exported_pages())
        [imported] = await waiting
        assert isinstance(imported.data, PagesImported)


def exported_pages() -> list[bytes]:
    """A 16 MiB guest's pages in four chunks, exported by hosts of another process."""
    h = Harness(HostRegistered(host="x1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024))
    h.do(CreateVm(vm="src", cpu=1, mem_mib=16, host="x1", memory_mode=MemoryMode.FULL, seed=5))
    export = ExportPages(host="x1", vm="src", flow="late", batch=BATCH)
    outcome = export_pages(h.machine, Envelope.wrap(export, producer="test"))
    return list(outcome.data["late"])
