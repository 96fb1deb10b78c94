"""A rebuild never fails on the log it wrote: the hosts service applies what was decided."""

from __future__ import annotations

from schemas import Envelope
from schemas.memory import PagesUnshared
from schemas.service import CommandRejected
from schemas.vm import CreateVm, ResizeVm
from shared.testing import poll
from tests.unit.stack import memory_stack


async def test_hosts_restart_after_a_shrink_and_keep_the_size_it_was_given() -> None:
    """An accounting-only VM shrunk live (its workload uses little of it) is shrunk again
    when the hosts service rebuilds; the service starts, and the VM can grow back."""
    async with memory_stack(hosts=1) as stack:
        c = stack.client
        [created] = await c.send_and_wait(
            CreateVm(vm="web", host="h1", cpu=1, mem_mib=2048), timeout=5
        )
        assert created.type == "VmCreated", created.data
        [shrunk] = await c.send_and_wait(ResizeVm(vm="web", host="h1", mem_mib=1024), timeout=5)
        assert shrunk.type == "VmResized", shrunk.data
        assert shrunk.data.used_mib is not None  # type: ignore[attr-defined]
        await stack.restart("hosts")
        assert not stack.failed()
        [grown] = await c.send_and_wait(ResizeVm(vm="web", host="h1", mem_mib=2048), timeout=5)
        assert not isinstance(grown.data, CommandRejected), grown.data
        assert await stack.of_type("GuestMemoryDiverged") == []


async def test_an_event_guest_memory_cannot_follow_is_logged_once_and_the_service_goes_on() -> None:
    """An event of the log that the rebuilt guest memory cannot follow (here: unsharing a
    page of an accounting-only VM, which has no bytes) becomes one GuestMemoryDiverged
    event naming it, however many restarts meet it; the service starts and works."""
    async with memory_stack(hosts=1) as stack:
        c = stack.client
        await c.send_and_wait(CreateVm(vm="web", host="h1", cpu=1, mem_mib=64), timeout=5)
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
        [grown] = await c.send_and_wait(ResizeVm(vm="web", host="h1", mem_mib=128), timeout=5)
        assert grown.type == "VmResized", grown.data
