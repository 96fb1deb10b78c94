"""HA on the in-memory bus: a host that goes silent is declared failed, its VMs restart
on the hosts left (high first, from the spare), and it never runs them again."""

from __future__ import annotations

from schemas.ha import HostFailed, HostReturned, VmRestarted
from schemas.host import CrashHost, RecoverHost
from schemas.pool import Owner
from schemas.queries import ListVms, VmList
from schemas.scheduling import PlaceVm
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
