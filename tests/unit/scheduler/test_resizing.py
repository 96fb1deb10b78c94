"""Resizes through the ledger: room is reserved before a VM grows, released after it
shrinks, and given back when its host refuses."""

from __future__ import annotations

from schemas import Command, Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import ChangeVmSize, PlaceVm
from schemas.service import CommandRejected
from schemas.vm import CreateVm, DestroyVm, PowerOffVm
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


async def test_a_grow_its_host_refuses_gives_the_room_back() -> None:
    """A VM created on the host behind the ledger's back (CreateVm sent straight to it)
    takes room the ledger does not know of: the scheduler reserves a grow, the host
    refuses it, and the reservation goes back to the VM's size. A refusal by the
    scheduler itself (wrong priority, unknown VM) reserves nothing."""
    async with memory_stack(hosts=1, ha_failures=0) as stack:
        await ask(stack, place("db", 8 * GIB), "VmCreated")
        await ask(stack, CreateVm(vm="rogue", host="h1", cpu=2, mem_mib=32 * GIB), "VmCreated")
        [refused] = await ask(
            stack, ChangeVmSize(vm="db", priority=Owner.LOW, mem_mib=40 * GIB), "VmResized"
        )
        assert isinstance(refused.data, CommandRejected)
        assert refused.producer == "hosts"
        await poll(
            lambda: reserved(stack, "db"),
            lambda r: r == (2000.0, 8 * GIB),
            what="db's reservation back to 8 GiB",
        )
        [wrong] = await ask(stack, ChangeVmSize(vm="db", priority=Owner.HIGH, mem_mib=9 * GIB))
        assert isinstance(wrong.data, CommandRejected)
        [ghost] = await ask(stack, ChangeVmSize(vm="ghost", priority=Owner.LOW, mem_mib=64))
        assert isinstance(ghost.data, CommandRejected)
        assert ghost.data.code == "unknown-vm"
        assert await reserved(stack, "db") == (2000.0, 8 * GIB)
        # The rogue goes, so that the ledger and the hosts agree again at the end.
        await ask(stack, PowerOffVm(vm="rogue", host="h1"), "VmPoweredOff")
        await ask(stack, DestroyVm(vm="rogue", host="h1"), "VmDestroyed")


def place(vm: str, mem_mib: int) -> PlaceVm:
    return PlaceVm(vm=vm, priority=Owner.LOW, cpu=2, mem_mib=mem_mib)
