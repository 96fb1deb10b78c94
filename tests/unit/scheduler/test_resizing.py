"""Resizes through the ledger: room is reserved before a VM grows, released after it
shrinks, and given back when its host refuses; a host changes nothing unreserved."""

from __future__ import annotations

from schemas import Command, Envelope, Message
from schemas.pool import Owner
from schemas.queries import HostList, ListHosts, ListVms, VmList
from schemas.scheduling import ChangeVmSize, PlaceVm
from schemas.service import CommandRejected
from schemas.transfers import StartMigration
from schemas.vm import CreateVm, ResizeVm
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

GIB = 1024


async def ask(stack: Stack, command: Command, *until: str) -> list[Envelope[Message]]:
    return [await stack.client.send_until(command, *until, timeout=5)]


async def reserved(stack: Stack, vm: str) -> tuple[float, float]:
    r = (await stack.ledger()).held(vm)
    assert r is not None
    return r.cpu_mhz, r.mem_mib


async def test_a_vm_grows_into_reserved_room_and_gives_back_what_it_sheds() -> None:
    async with memory_stack(hosts=1, ha_failures=0) as stack:
        await ask(stack, PlaceVm(vm="db", priority=Owner.LOW, cpu=2, mem_mib=8 * GIB), "VmCreated")
        await ask(
            stack, PlaceVm(vm="web", priority=Owner.LOW, cpu=2, mem_mib=48 * GIB), "VmCreated"
        )

        # 64 GiB in all, 56 held: 8 more fit, 16 more do not.
        [refused] = await ask(stack, ChangeVmSize(vm="db", priority=Owner.LOW, mem_mib=24 * GIB))
        assert isinstance(refused.data, CommandRejected)
        assert refused.data.code == "insufficient-capacity"
        assert await reserved(stack, "db") == (2000.0, 8 * GIB)

        grown = await ask(
            stack,
            ChangeVmSize(vm="db", priority=Owner.LOW, cpu=4, mem_mib=16 * GIB),
            "VmResized",
        )
        assert [e.type for e in grown] == ["VmResized"], grown
        assert await reserved(stack, "db") == (4000.0, 16 * GIB)
        # The reservation came first: it is in the log before the resize.
        kinds = [e.type for e in await stack.events(lambda e: e.subject in ("pool/h1", "vm/db"))]
        assert kinds.index("VmResizeRequested") < kinds.index("VmResized")

        await ask(stack, ChangeVmSize(vm="web", priority=Owner.LOW, mem_mib=8 * GIB), "VmResized")
        await poll(
            lambda: reserved(stack, "web"),
            lambda r: r == (2000.0, 8 * GIB),
            what="web's reservation down to 8 GiB",
        )


async def test_a_resize_its_host_refuses_gives_the_room_back() -> None:
    """The scheduler reserves the room a resize needs, the host refuses it (more vCPUs,
    but memory below what the guest uses), and the reservation goes back to the VM's
    size. A refusal by the scheduler itself (wrong priority, unknown VM) reserves nothing."""
    async with memory_stack(hosts=1, ha_failures=0) as stack:
        await ask(stack, place("db", 8 * GIB), "VmCreated")
        await poll(
            lambda: stack.client.query(ListHosts()),
            lambda m: isinstance(m, HostList) and m.hosts[0].mem_active_mib > 16,
            what="db's guest using more than 16 MiB",
        )
        [refused] = await ask(
            stack, ChangeVmSize(vm="db", priority=Owner.LOW, cpu=4, mem_mib=16), "VmResized"
        )
        assert isinstance(refused.data, CommandRejected)
        assert (refused.producer, refused.data.code) == ("hosts", "below-used-memory")
        await poll(
            lambda: reserved(stack, "db"),
            lambda r: r == (2000.0, 8 * GIB),
            what="db's reservation back to 2 vCPUs",
        )
        [wrong] = await ask(stack, ChangeVmSize(vm="db", priority=Owner.HIGH, mem_mib=9 * GIB))
        assert isinstance(wrong.data, CommandRejected)
        [ghost] = await ask(stack, ChangeVmSize(vm="ghost", priority=Owner.LOW, mem_mib=64))
        assert isinstance(ghost.data, CommandRejected)
        assert ghost.data.code == "unknown-vm"
        assert await reserved(stack, "db") == (2000.0, 8 * GIB)


async def test_a_host_changes_nothing_the_ledger_has_not_reserved() -> None:
    """Commands sent straight to a host, past the schedulers, are refused
    ``no-reservation``: a VM with no reservation, one that names no host, a grow past its
    reservation, a migration with no room reserved on its target. The ledger and the
    hosts agree all along (the stack's audit at its end)."""
    async with memory_stack(hosts=2, ha_failures=0) as stack:
        await ask(stack, place("db", 8 * GIB), "VmCreated")
        host = (await stack.ledger()).located["db"]
        other = "h2" if host == "h1" else "h1"
        rogue = [
            CreateVm(vm="rogue", host="h1", cpu=2, mem_mib=32 * GIB),
            CreateVm(vm="anywhere", cpu=1, mem_mib=64),
            ResizeVm(vm="db", host=host, mem_mib=16 * GIB),
            ResizeVm(vm="db", host=host, cpu=3),
            StartMigration(host=host, target=other, rate_mbps=1000, migration="m1", vm="db"),
        ]
        for command in rogue:
            [refused] = await ask(stack, command)
            assert isinstance(refused.data, CommandRejected), (command, refused)
            assert refused.data.code == "no-reservation", refused.data.reason
        # Within its reservation, a host does as it is told: a shrink needs no more room.
        [shrunk] = await ask(stack, ResizeVm(vm="db", host=host, mem_mib=6 * GIB), "VmResized")
        assert shrunk.type == "VmResized", shrunk
        listed = await stack.client.query(ListVms())
        assert isinstance(listed, VmList)
        vms = {vm.vm: vm for vm in listed.vms}
        assert set(vms) == {"db"}
        assert (vms["db"].host, vms["db"].mem_mib) == (host, 6 * GIB)


def place(vm: str, mem_mib: int) -> PlaceVm:
    return PlaceVm(vm=vm, priority=Owner.LOW, cpu=2, mem_mib=mem_mib)
