"""Failures at awkward moments: a host that flaps, a host that fails while a migration to
or from it is in flight. Each ends in stated events, with every VM running once and the
pool never over-committed (the stack's audit reads the whole log at the end)."""

from __future__ import annotations

import asyncio

from schemas import Envelope, Message
from schemas.host import CrashHost, RecoverHost
from schemas.pool import Owner
from schemas.scheduling import MigrateVm
from shared.testing import poll
from tests.unit.ha.test_restarts import _place, _vms
from tests.unit.stack import Stack, memory_stack

GIB = 1024
TICK = 0.1


def alternation(events: list[Envelope[Message]], host: str) -> list[str]:
    return [e.type for e in events if e.subject == f"ha/{host}"]


async def test_a_flapping_host_runs_no_vm_twice_and_is_declared_once_per_outage() -> None:
    """A host crashes and recovers three times, once too briefly to be noticed: every
    outage that lasted is one HostFailed followed by one HostReturned, its VMs restart
    elsewhere once, and none of them is back on it."""
    async with memory_stack(hosts=3, ha_failures=1, tick_seconds=TICK, failure_ticks=3) as stack:
        hosts = {
            vm: await _place(stack, vm, prio, 2 * GIB)
            for vm, prio in [("hi-1", Owner.HIGH), ("hi-2", Owner.HIGH), ("lo-1", Owner.LOW)]
        }
        victim = hosts["hi-1"]
        lost = sorted(vm for vm, host in hosts.items() if host == victim)
        c = stack.client
        # Too brief to be declared failed (under three ticks).
        await c.send(CrashHost(host=victim))
        await asyncio.sleep(TICK)
        await c.send(RecoverHost(host=victim))
        await asyncio.sleep(6 * TICK)
        assert await stack.of_type("HostFailed") == []
        for outage in range(1, 3):
            await c.send(CrashHost(host=victim))
            await poll(
                lambda: stack.of_type("HostFailed"),
                lambda es, n=outage: len(es) == n,  # type: ignore[misc]
                what=f"outage {outage} declared",
            )
            await c.send(RecoverHost(host=victim))
            await poll(
                lambda: stack.of_type("HostReturned"),
                lambda es, n=outage: len(es) == n,  # type: ignore[misc]
                what=f"return {outage} declared",
            )
        ha = await stack.of_type("HostFailed", "HostReturned")
        assert alternation(ha, victim) == ["HostFailed", "HostReturned"] * 2
        running = await poll(
            lambda: _vms(stack),
            lambda vms: all(vms[vm][1] == "on" for vm in hosts),
            what="every VM on",
        )
        assert all(running[vm][0] != victim for vm in lost)
        restarts = [e.data.vm for e in await stack.of_type("VmRestarted")]  # type: ignore[attr-defined]
        assert sorted(restarts) == lost, "each lost VM restarted once, at the first outage"


async def slow_migration(stack: Stack, vm: str, target: str) -> None:
    await stack.client.send(MigrateVm(vm=vm, priority=Owner.LOW, target=target))
    await poll(
        lambda: stack.events(lambda e: e.type == "MigrationStarted" and e.subject == f"vm/{vm}"),
        lambda es: len(es) == 1,
        what=f"{vm}'s migration started",
    )


async def test_a_target_failing_during_a_migration_aborts_it_and_the_vm_stays() -> None:
    """The target fails mid-copy: the migration is aborted, the VM keeps running on its
    source (it is not restarted: it never stopped), and the room held for it on the
    failed target is released."""
    async with memory_stack(
        hosts=3, ha_failures=0, tick_seconds=TICK, failure_ticks=3, migration_mbps=50.0
    ) as stack:
        source = await _place(stack, "db", Owner.LOW, 8 * GIB)
        target = next(h for h in ("h1", "h2", "h3") if h != source)
        await slow_migration(stack, "db", target)
        await stack.client.send(CrashHost(host=target))
        [aborted] = await poll(
            lambda: stack.of_type("MigrationAborted"), lambda es: len(es) == 1, what="abort"
        )
        assert aborted.subject == "vm/db"
        await poll(lambda: stack.of_type("HostFailed"), lambda es: len(es) == 1, what="failed")
        assert (await _vms(stack))["db"] == (source, "on")
        assert await stack.of_type("VmRestarted") == []
        ledger = await poll(
            stack.ledger,
            lambda led: not led.reservations.get(target),
            what=f"nothing held on {target}",
        )
        assert ledger.located["db"] == source
        await stack.client.send(RecoverHost(host=target))
        await poll(lambda: stack.of_type("HostReturned"), lambda es: len(es) == 1, what="back")


async def test_a_source_failing_during_a_migration_restarts_the_vm_once() -> None:
    """The source fails mid-copy: the migration is aborted and the VM, lost with its
    host, is restarted once by HA (on a surviving host, the failed target excluded
    by nothing but room)."""
    async with memory_stack(
        hosts=3, ha_failures=1, tick_seconds=TICK, failure_ticks=3, migration_mbps=50.0
    ) as stack:
        source = await _place(stack, "db", Owner.HIGH, 8 * GIB)
        target = next(h for h in ("h1", "h2", "h3") if h != source)
        await stack.client.send(MigrateVm(vm="db", priority=Owner.HIGH, target=target))
        await poll(lambda: stack.of_type("MigrationStarted"), lambda es: len(es) == 1, what="start")
        await stack.client.send(CrashHost(host=source))
        await poll(lambda: stack.of_type("MigrationAborted"), lambda es: len(es) == 1, what="abort")
        [restarted] = await poll(
            lambda: stack.of_type("VmRestarted"), lambda es: len(es) == 1, what="restart"
        )
        assert restarted.data.from_host == source  # type: ignore[attr-defined]
        running = await poll(
            lambda: _vms(stack), lambda vms: vms["db"][1] == "on", what="db on again"
        )
        assert running["db"][0] != source
        await asyncio.sleep(5 * TICK)
        assert len(await stack.of_type("VmRestarted")) == 1
        ledger = await stack.ledger()
        assert ledger.located["db"] == running["db"][0]
        await stack.client.send(RecoverHost(host=source))
        await poll(lambda: stack.of_type("HostReturned"), lambda es: len(es) == 1, what="back")
