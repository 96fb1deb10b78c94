"""A rebuild never fails on the log it wrote: the hosts service applies what was decided."""

from __future__ import annotations

from schemas import Command, Envelope, Message
from schemas.memory import PagesUnshared
from schemas.pool import Owner
from schemas.scheduling import Affinity, ChangeVmSize, PlacementRules, PlaceVm
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack


async def ask(stack: Stack, command: Command, until: str) -> Envelope[Message]:
    """Send ``command`` and return the ``until`` event of its workflow (or its refusal)."""
    return await stack.client.send_until(command, until, timeout=5)


def on_h1(vm: str, mem_mib: int) -> PlaceVm:
    """A VM on h1, placed through the scheduler (its room reserved in the ledger)."""
    rules = PlacementRules(host_affinity=Affinity(must=["h1"]))
    return PlaceVm(vm=vm, priority=Owner.LOW, cpu=1, mem_mib=mem_mib, rules=rules)


def resize(vm: str, mem_mib: int) -> ChangeVmSize:
    return ChangeVmSize(vm=vm, priority=Owner.LOW, mem_mib=mem_mib)


async def test_hosts_restart_after_a_shrink_and_keep_the_size_it_was_given() -> None:
    """An accounting-only VM shrunk live (its workload uses little of it) is shrunk again
    when the hosts service rebuilds; the service starts, and the VM can grow back."""
    async with memory_stack(hosts=1) as stack:
        created = await ask(stack, on_h1("web", 2048), "VmCreated")
        assert created.type == "VmCreated", created.data
        shrunk = await ask(stack, resize("web", 1024), "VmResized")
        assert shrunk.type == "VmResized", shrunk.data
        assert shrunk.data.used_mib is not None  # type: ignore[attr-defined]
        await stack.restart("hosts")
        assert not stack.failed()
        grown = await ask(stack, resize("web", 2048), "VmResized")
        assert grown.type == "VmResized", grown.data
        assert await stack.of_type("GuestMemoryDiverged") == []


async def test_an_event_guest_memory_cannot_follow_is_logged_once_and_the_service_goes_on() -> None:
    """An event of the log that the rebuilt guest memory cannot follow (here: unsharing a
    page of an accounting-only VM, which has no bytes) becomes one GuestMemoryDiverged
    event naming it, however many restarts meet it; the service starts and works."""
    async with memory_stack(hosts=1) as stack:
        await ask(stack, on_h1("web", 64), "VmCreated")
        odd = Envelope.wrap(PagesUnshared(host="h1", vm="web", pages=[0]), producer="hosts")
        await stack.bus.append(odd)
        for _ in range(2):
            await stack.restart("hosts")
            assert not stack.failed()
            await poll(
                lambda: stack.of_type("GuestMemoryDiverged"), lambda es: len(es) >= 1, what="it"
            )
        [diverged] = await stack.of_type("GuestMemoryDiverged")
        assert diverged.data.event_type == "PagesUnshared"  # type: ignore[attr-defined]
        assert diverged.data.host == "h1"  # type: ignore[attr-defined]
        assert "accounting-only" in diverged.data.error  # type: ignore[attr-defined]
        grown = await ask(stack, resize("web", 128), "VmResized")
        assert grown.type == "VmResized", grown.data
