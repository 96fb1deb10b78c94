"""The stack comes back the same after a restart of every service, whatever it did last:
create, resize both ways, migrate, share pages, scratch space, crash and recover; on
the in-memory bus, NATS and RabbitMQ."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from schemas import Command, Envelope, Message
from schemas.host import CrashHost, RecoverHost
from schemas.memory import GetVmMemory, PagePair, SharePages, VmMemory
from schemas.pool import Owner
from schemas.queries import HostList, ListHosts, ListVms, VmList
from schemas.scheduling import ChangeVmSize, MigrateVm, PlaceVm
from schemas.scratch import AllocateScratch, ReleaseScratch
from schemas.vm import MemoryMode
from shared.testing import poll
from tests.contract.conftest import Broker
from tests.unit.stack import Stack, service_stack

Snapshot = dict[str, Any]


async def ask(stack: Stack, command: Command, *until: str) -> Envelope[Message]:
    answer = await stack.client.send_until(command, *until, timeout=10)
    assert answer.type != "CommandRejected", answer.data
    return answer


async def snapshot(stack: Stack) -> Snapshot:
    """What a user sees: VMs, hosts, the pool, and every guest's memory byte for byte."""
    await poll(stack.drift, lambda found: found == [], what="a quiet stack")
    vms = await stack.client.query(ListVms())
    hosts = await stack.client.query(ListHosts())
    assert isinstance(vms, VmList)
    assert isinstance(hosts, HostList)
    memory = {}
    for v in vms.vms:
        mem = await stack.client.query(GetVmMemory(vm=v.vm))
        assert isinstance(mem, VmMemory)
        # A running accounting-only guest's used size follows the writes of its workload's
        # ticks, which a rebuild does not repeat: what it holds is its size and sharing.
        used = mem.used_pages if mem.mode == MemoryMode.FULL else None
        memory[v.vm] = (mem.host, mem.pages, mem.shared_pages, used, mem.checksum)
    pool = await stack.pool()
    return {
        "vms": sorted((v.vm, v.host, v.cpu, v.mem_mib, str(v.state)) for v in vms.vms),
        "hosts": sorted((h.host, str(h.state), h.mem_reserved_mib, h.vms) for h in hosts.hosts),
        "pool": {
            (r.host, r.reservation): (r.cpu_mhz, r.mem_mib)
            for rows in pool.held.values()
            for r in rows.values()
        },
        "memory": memory,
    }


async def equal_pages(stack: Stack, vm_a: str, vm_b: str) -> PagePair:
    """A page of each VM holding the same bytes (their guest OS template's)."""
    a = await stack.client.query(GetVmMemory(vm=vm_a, digests=True))
    b = await stack.client.query(GetVmMemory(vm=vm_b, digests=True))
    assert isinstance(a, VmMemory)
    assert isinstance(b, VmMemory)
    assert a.digests is not None
    assert b.digests is not None
    where = {digest: page for page, digest in enumerate(b.digests)}
    page = next(p for p, d in enumerate(a.digests) if d in where and p != where[d])
    return PagePair(vm_a=vm_a, page_a=page, vm_b=vm_b, page_b=where[a.digests[page]])


def place(vm: str, host: str) -> PlaceVm:
    """A full-memory VM, powered off: no workload writes its pages, so its bytes are
    exactly what the log says they are."""
    return PlaceVm.model_validate(
        {
            "vm": vm,
            "priority": Owner.LOW,
            "cpu": 1,
            "mem_mib": 16,
            "memory_mode": MemoryMode.FULL,
            "power_on": False,
            "seed": len(vm),
            "rules": {"host_affinity": {"must": [host]}},
        }
    )


def accounting(vm: str, host: str) -> PlaceVm:
    """An accounting-only VM of 2 GiB that runs: its workload writes pages all over it,
    but its working set is small, so it may shrink live; a rebuild once refused to."""
    return place(vm, host).model_copy(
        update={"memory_mode": MemoryMode.ACCOUNTING, "mem_mib": 2048, "power_on": True, "seed": 0}
    )


def resize(vm: str, mem_mib: int) -> ChangeVmSize:
    return ChangeVmSize(vm=vm, priority=Owner.LOW, mem_mib=mem_mib)


async def test_every_operation_survives_a_restart_of_every_service(broker: Broker) -> None:
    async with service_stack(
        3, connect=broker.connect, namespace=broker.namespace, settings={"ha_failures": 0}
    ) as stack:

        async def share() -> None:
            pair = await equal_pages(stack, "a", "b")
            await ask(stack, SharePages(host="h1", pairs=[pair]), "PagesShared")

        operations: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("create", lambda: ask(stack, place("a", "h1"), "VmCreated")),
            ("create another", lambda: ask(stack, place("b", "h1"), "VmCreated")),
            ("share", share),
            ("create accounting", lambda: ask(stack, accounting("c", "h2"), "VmCreated")),
            ("shrink accounting", lambda: ask(stack, resize("c", 1024), "VmResized")),
            ("grow", lambda: ask(stack, resize("a", 32), "VmResized")),
            ("shrink", lambda: ask(stack, resize("a", 16), "VmResized")),
            (
                "scratch",
                lambda: ask(
                    stack, AllocateScratch(host="h1", vm="b", tag="t", mib=64), "ScratchAllocated"
                ),
            ),
            (
                "scratch back",
                lambda: ask(stack, ReleaseScratch(host="h1", vm="b", tag="t"), "ScratchReleased"),
            ),
            (
                "migrate",
                lambda: ask(
                    stack, MigrateVm(vm="b", priority=Owner.LOW, target="h2"), "MigrationCompleted"
                ),
            ),
            ("crash", lambda: ask(stack, CrashHost(host="h3"), "HostCrashed")),
            ("recover", lambda: ask(stack, RecoverHost(host="h3"), "HostRecovered")),
        ]
        for name, operation in operations:
            await operation()
            before = await snapshot(stack)
            for service in list(stack.running):
                await stack.restart(service)
            assert not stack.failed(), name
            after = await snapshot(stack)
            assert after == before, name
        assert await stack.of_type("GuestMemoryDiverged") == []
