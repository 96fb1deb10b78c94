"""HA on the in-memory bus: a host that goes silent is declared failed, its VMs restart
on the hosts left (high first, from the spare), and it never runs them again."""

from __future__ import annotations

import asyncio

from schemas.ha import HostFailed, HostReturned, VmRestarted
from schemas.host import CrashHost, RecoverHost
from schemas.pool import Owner
from schemas.queries import ListVms, VmList
from schemas.scheduling import PlaceVm
from schemas.tenants import ClusterList, ClusterScaled, ClusterView, CreateCluster, ListClusters
from schemas.vm import DestroyVm, PowerOffVm
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

GIB = 1024


async def _place(stack: Stack, vm: str, priority: Owner, mem_mib: int) -> str:
    await stack.client.send(PlaceVm(vm=vm, priority=priority, cpu=2, mem_mib=mem_mib))
    [created] = await poll(
        lambda: stack.events(lambda e: e.type == "VmCreated" and e.subject == f"vm/{vm}"),
        lambda es: len(es) == 1,
        what=f"{vm} created",
    )
    return created.data.host  # type: ignore[attr-defined, no-any-return]


async def _vms(stack: Stack) -> dict[str, tuple[str, str]]:
    reply = await stack.client.query(ListVms())
    assert isinstance(reply, VmList)
    return {v.vm: (v.host, v.state) for v in reply.vms}


async def test_a_crashed_hosts_vms_restart_elsewhere_and_never_run_twice() -> None:
    """The crashed host stops its telemetry; after 3 missed ticks it is declared failed
    with its VMs as evidence; its VMs restart on the other hosts at their reserved size,
    their reservations move in the ledger, and when it comes back none of them is on it."""
    async with memory_stack(hosts=3, ha_failures=1, tick_seconds=0.1, failure_ticks=3) as stack:
        hosts = {
            vm: await _place(stack, vm, prio, mem)
            for vm, prio, mem in [
                ("hi-1", Owner.HIGH, 8 * GIB),
                ("hi-2", Owner.HIGH, 4 * GIB),
                ("lo-1", Owner.LOW, 4 * GIB),
                ("lo-2", Owner.LOW, 2 * GIB),
            ]
        }
        victim = hosts["hi-1"]
        lost = sorted(vm for vm, host in hosts.items() if host == victim)
        await stack.client.send(CrashHost(host=victim))

        [failed] = await poll(
            lambda: stack.of_type("HostFailed"), lambda es: len(es) == 1, what="HostFailed"
        )
        assert isinstance(failed.data, HostFailed)
        assert failed.data.host == victim
        assert failed.data.vms == lost
        assert failed.data.missed_ticks >= 3
        assert failed.data.silent_seconds > 0.3

        restarted = await poll(
            lambda: stack.of_type("VmRestarted"),
            lambda es: len(es) == len(lost),
            what=f"{lost} restarted",
        )
        for env in restarted:
            assert isinstance(env.data, VmRestarted)
            assert env.data.from_host == victim
            assert env.data.host != victim
            assert env.causation_id is not None
        ledger = await stack.ledger()
        running = await _vms(stack)
        for vm in lost:
            assert ledger.located[vm] == running[vm][0] != victim
            assert running[vm][1] == "on"
        assert not any(r.reservation in lost for r in ledger.reservations[victim].values())

        await stack.client.send(RecoverHost(host=victim))
        [returned] = await poll(
            lambda: stack.of_type("HostReturned"), lambda es: len(es) == 1, what="HostReturned"
        )
        assert isinstance(returned.data, HostReturned)
        assert returned.data.host == victim
        running = await _vms(stack)
        assert all(running[vm][0] != victim for vm in lost)
        # Nothing is restarted twice, and the host takes work again.
        assert len(await stack.of_type("VmRestarted")) == len(lost)
        assert victim not in (await stack.ledger()).failed


async def test_a_vm_with_no_room_left_says_why_once_and_restarts_when_room_frees() -> None:
    """Two hosts and no spare: a full host fails, the other cannot take its VM; the
    scheduler says so once (VmRestartFailed), and restarts it as soon as room frees."""
    async with memory_stack(hosts=2, ha_failures=0, tick_seconds=0.1, failure_ticks=3) as stack:
        first = await _place(stack, "big-1", Owner.LOW, 40 * GIB)
        second = await _place(stack, "big-2", Owner.LOW, 40 * GIB)
        assert first != second
        await stack.client.send(CrashHost(host=first))
        [refused] = await poll(
            lambda: stack.of_type("VmRestartFailed"), lambda es: len(es) == 1, what="refusal"
        )
        assert refused.data.vm == "big-1"  # type: ignore[attr-defined]
        assert "no host has room" in refused.data.reason  # type: ignore[attr-defined]
        await asyncio.sleep(5 * 0.1)
        assert len(await stack.of_type("VmRestartFailed")) == 1
        assert await stack.of_type("VmRestarted") == []

        await stack.client.send_and_wait(PowerOffVm(vm="big-2", host=second))
        await stack.client.send(DestroyVm(vm="big-2", host=second))
        [moved] = await poll(
            lambda: stack.of_type("VmRestarted"), lambda es: len(es) == 1, what="restart"
        )
        assert moved.data.host == second  # type: ignore[attr-defined]
        assert (await stack.ledger()).located["big-1"] == second


async def test_a_tenant_counts_no_lost_worker_as_running_and_replaces_one_not_restarted() -> None:
    """A low cluster's two big workers fill two hosts with no spare: when one host fails
    the worker on it cannot restart; the cluster stops counting it as running and asks
    for a new worker in its place (which the full pool then refuses, shrinking it)."""
    async with memory_stack(
        hosts=2, tenants=True, ha_failures=0, tick_seconds=0.1, failure_ticks=3
    ) as stack:
        c = stack.client
        await c.send(
            CreateCluster(
                cluster="etl", workers=2, max_workers=4, worker_cpu=2, worker_mem_mib=40 * GIB
            )
        )
        created = await poll(
            lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="2 workers"
        )
        victim = created[0].data.host  # type: ignore[attr-defined]
        lost = created[0].data.vm  # type: ignore[attr-defined]
        await c.send(CrashHost(host=victim))
        await poll(lambda: stack.of_type("VmRestartFailed"), lambda es: len(es) == 1, what="it")
        [replaced] = await poll(
            lambda: stack.events(
                lambda e: isinstance(e.data, ClusterScaled) and e.data.removed == [lost]
            ),
            lambda es: len(es) == 1,
            what=f"{lost} replaced",
        )
        assert isinstance(replaced.data, ClusterScaled)
        assert replaced.data.added == ["etl-w2"]
        assert victim in replaced.data.reason
        await poll(
            lambda: _cluster(stack),
            lambda v: v.workers == 1 and v.running == 1,
            what="one worker running, none counted dead",
        )


async def _cluster(stack: Stack) -> ClusterView:
    reply = await stack.client.query(ListClusters())
    assert isinstance(reply, ClusterList)
    [view] = reply.clusters
    return view


async def test_a_second_host_failing_during_restarts_loses_no_vm() -> None:
    """A restart storm: a host fails, and while its VMs restart a second one fails too
    (perhaps the one they were sent to). Every VM of both ends up running once, on the
    host left, and nothing is over-committed (the stack's audit checks the pool)."""
    async with memory_stack(hosts=3, ha_failures=2, tick_seconds=0.1, failure_ticks=3) as stack:
        hosts = {
            vm: await _place(stack, vm, prio, 2 * GIB)
            for vm, prio in [(f"hi-{i}", Owner.HIGH) for i in range(3)]
            + [(f"lo-{i}", Owner.LOW) for i in range(3)]
        }
        first = hosts["hi-0"]
        second = next(h for h in sorted(set(hosts.values())) if h != first)
        survivor = ({"h1", "h2", "h3"} - {first, second}).pop()
        await stack.client.send(CrashHost(host=first))
        await poll(lambda: stack.of_type("HostFailed"), lambda es: len(es) == 1, what="first")
        await stack.client.send(CrashHost(host=second))
        running = await poll(
            lambda: _vms(stack),
            lambda vms: all(vms[vm] == (survivor, "on") for vm in hosts),
            timeout=15,
            what=f"every VM running on {survivor}",
        )
        assert sorted(running) == sorted(hosts)
