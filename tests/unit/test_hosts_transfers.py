"""Page export and import through a data flow, stun and throttle, on the in-memory bus."""

from __future__ import annotations

import pytest

from schemas import Command, Envelope, Event
from schemas.host import HostRegistered
from schemas.memory import ExportPages, ImportPages, PagesExported, PagesImported, Selection
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, MemoryMode, StunVm, ThrottleVm, UnstunVm
from services.hosts import wire
from services.hosts.domain import check_transfer
from services.hosts.memory import SizeMismatch
from services.hosts.transfers import export_pages, import_pages, read_flow
from shared.bus.memory import MemoryBus
from tests.unit.test_hosts_machine import Harness


def two_hosts() -> Harness:
    h = Harness(
        HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024),
        HostRegistered(host="h2", cpu_cores=4, cpu_mhz=2000, mem_mib=1024),
    )
    for name, host, seed in (("src", "h1", 1), ("dst", "h2", 2)):
        h.do(
            CreateVm(
                vm=name,
                cpu=1,
                mem_mib=16,
                host=host,
                memory_mode=MemoryMode.FULL,
                seed=seed,
                power_on=False,
            )
        )
    return h


async def move(h: Harness, bus: MemoryBus, cmd: Command) -> list[Event]:
    env = Envelope.wrap(cmd, producer="test")
    if refused := check_transfer(h.fleet, env):
        return refused
    if isinstance(cmd, ExportPages):
        outcome = export_pages(h.machine, env)
        # What the runtime does with it: the pages go on the flow before the event says so.
        for flow, chunks in outcome.data.items():
            await bus.put_data(flow, list(chunks))
        return list(outcome.events)
    return import_pages(h.machine, env, await read_flow(bus, env))


async def test_export_then_import_reproduces_the_checksum() -> None:
    """Pages exported from one host and imported on another give the same memory, with
    zero pages carried as markers and the destination still in whole large pages."""
    h, bus = two_hosts(), MemoryBus()
    src, dst = h.machine.memory["h1"], h.machine.memory["h2"]
    assert src.checksum("src") != dst.checksum("dst")

    [exported] = await move(h, bus, ExportPages(host="h1", vm="src", flow="m1", batch=64))
    assert isinstance(exported, PagesExported)
    assert exported.pages == exported.guest_pages == src.spec("src").pages
    assert 0 < exported.zero_pages < exported.pages
    assert exported.bytes == (exported.pages - exported.zero_pages) * 4096

    [imported] = await move(
        h, bus, ImportPages(host="h2", vm="dst", flow="m1", batches=exported.batches)
    )
    assert isinstance(imported, PagesImported)
    assert imported.checksum == src.checksum("src") == dst.checksum("dst")
    assert imported.zero_pages == exported.zero_pages
    usage = dst.vm_usage("dst")
    assert usage.resident == usage.pages == dst.spec("dst").pages
    assert usage.pages % 512 == 0


async def test_dirty_export_carries_only_pages_written_since_the_last() -> None:
    """After a checkpoint, a dirty export carries just the pages the guest wrote since."""
    h, bus = two_hosts(), MemoryBus()
    await move(
        h, bus, ExportPages(host="h1", vm="src", flow="base", selection=Selection.CHECKPOINT)
    )
    h.machine.memory["h1"].write("src", 3, b"x" * 10)
    h.machine.memory["h1"].write("src", 700, b"y" * 10)
    [dirty] = await move(
        h, bus, ExportPages(host="h1", vm="src", flow="d1", selection=Selection.DIRTY)
    )
    assert isinstance(dirty, PagesExported)
    assert dirty.pages == 2


async def test_import_into_a_vm_of_another_size_is_rejected() -> None:
    """Batches from a VM of another size are refused as a size mismatch."""
    h, bus = two_hosts(), MemoryBus()
    h.do(
        CreateVm(
            vm="big", cpu=1, mem_mib=32, host="h2", memory_mode=MemoryMode.FULL, power_on=False
        )
    )
    [exported] = await move(h, bus, ExportPages(host="h1", vm="src", flow="m2"))
    assert isinstance(exported, PagesExported)
    [refused] = await move(
        h, bus, ImportPages(host="h2", vm="big", flow="m2", batches=exported.batches)
    )
    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.SIZE_MISMATCH


async def test_transfers_refuse_unknown_vms_pages_and_accounting_only_vms() -> None:
    """Unknown VMs, pages past the end, and VMs without bytes are refused with their code."""
    h, bus = two_hosts(), MemoryBus()
    h.do(CreateVm(vm="acct", cpu=1, mem_mib=16, host="h1"))
    cases = [
        (ExportPages(host="h1", vm="nope", flow="x"), RejectionCode.UNKNOWN_VM),
        (ExportPages(host="h1", vm="acct", flow="x"), RejectionCode.ACCOUNTING_ONLY),
        (
            ExportPages(host="h1", vm="src", flow="x", pages=[10**6]),
            RejectionCode.PAGE_OUT_OF_RANGE,
        ),
    ]
    for cmd, code in cases:
        [event] = await move(h, bus, cmd)
        assert isinstance(event, CommandRejected), cmd
        assert event.code == code


def test_a_malformed_batch_is_a_size_mismatch() -> None:
    """Bytes that are not a page batch decode to a typed error, not a crash."""
    for raw in (
        b"",
        b"VPB1\x00\x00\x00\x02{}",
        b"XXXX\x00\x00\x00\x00",
        b"VPB1\x00\x00\x00\x05junk!",
    ):
        with pytest.raises(SizeMismatch):
            wire.decode(raw)


def test_stunned_vm_does_no_work_and_throttle_caps_its_cpu() -> None:
    """A stunned VM demands no CPU and writes no pages; a throttled one is capped."""
    h = Harness(HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024))
    h.do(CreateVm(vm="a", cpu=2, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL))
    mem = h.machine.memory["h1"]
    h.do(StunVm(vm="a", host="h1"))
    before = mem.checksum("a")
    sample = h.tick()["h1"].vms[0]
    assert sample.cpu_demand_mhz == 0
    assert mem.checksum("a") == before
    h.do(UnstunVm(vm="a", host="h1"))
    h.do(ThrottleVm(vm="a", host="h1", cpu_cap=0.1))
    throttled = h.tick()["h1"].vms[0]
    assert throttled.cpu_used_mhz <= 0.1 * 2 * 2000 + 1e-6
    assert mem.checksum("a") != before
