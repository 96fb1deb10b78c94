"""The schedulers as services on the in-memory bus: HA spare, degraded VMs raised, bad
input refused with nothing reserved."""

from __future__ import annotations

from collections import Counter

from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import (
    Affinity,
    CopyFile,
    MaintainCheapest,
    MigrateVm,
    PlacementPolicy,
    PlacementRules,
    PlaceVm,
    SetMaintenance,
)
from schemas.service import CommandRejected
from schemas.vm import DestroyVm, GuestInputs, PowerOffVm
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

GIB = 1024


async def placed(stack: Stack, count: int) -> None:
    await poll(
        lambda: stack.of_type("VmPlaced", "CommandRejected"),
        lambda es: len(es) >= count,
        what=f"{count} placements or refusals",
    )


async def test_the_low_scheduler_never_takes_the_ha_spare() -> None:
    """One high VM of 16 GiB on two 64 GiB hosts: each host holds back a 16 GiB slot so
    it can restart there. The low scheduler fills the rest with 4 GiB VMs and no more."""
    async with memory_stack(hosts=2, ha_failures=1) as stack:
        await stack.client.send(PlaceVm(vm="hi", priority=Owner.HIGH, cpu=4, mem_mib=16 * GIB))
        await placed(stack, 1)
        for i in range(30):
            await stack.client.send(
                PlaceVm(vm=f"lo{i}", priority=Owner.LOW, cpu=1, mem_mib=4 * GIB)
            )
        await placed(stack, 31)

        answers = await stack.of_type("VmPlaced", "CommandRejected")
        low_placed = [e for e in answers if e.type == "VmPlaced" and e.subject != "vm/hi"]
        # 128 GiB - 16 GiB placed high - 2 x 16 GiB spare = 80 GiB = 20 VMs.
        assert len(low_placed) == 20
        codes = {e.data.code for e in answers if isinstance(e.data, CommandRejected)}
        assert codes == {"insufficient-capacity"}
        ledger = await stack.ledger()
        hi_host = ledger.located["hi"]
        for host in ("h1", "h2"):
            if host != hi_host:
                # Where the high VM is not, its slot is free: it can restart there.
                assert ledger.free(host).mem_mib >= 16 * GIB
        # The high scheduler may use the spare: it protects its own VMs by it.
        await stack.client.send(PlaceVm(vm="hi2", priority=Owner.HIGH, cpu=1, mem_mib=8 * GIB))
        await placed(stack, 32)
        [hi2] = await stack.events(lambda e: e.subject == "vm/hi2" and e.type == "VmPlaced")
        assert hi2.type == "VmPlaced"


async def test_a_degraded_vm_is_raised_when_capacity_frees() -> None:
    async with memory_stack(hosts=1, ha_failures=0) as stack:
        await stack.client.send(PlaceVm(vm="filler", priority=Owner.HIGH, cpu=2, mem_mib=48 * GIB))
        await placed(stack, 1)
        await stack.client.send(
            PlaceVm(
                vm="elastic",
                priority=Owner.LOW,
                cpu=4,
                mem_mib=32 * GIB,
                min_cpu=1,
                min_mem_mib=8 * GIB,
            )
        )
        await placed(stack, 2)
        [first] = await stack.events(lambda e: e.subject == "vm/elastic" and e.type == "VmPlaced")
        assert first.data.degraded  # type: ignore[attr-defined]
        assert first.data.mem_mib == 16 * GIB  # type: ignore[attr-defined]
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="created")

        await stack.client.send(PowerOffVm(vm="filler", host="h1"))
        await stack.client.send(DestroyVm(vm="filler", host="h1"))
        [raised] = await poll(
            lambda: stack.of_type("VmRaised"), lambda es: len(es) == 1, what="VmRaised"
        )
        assert (raised.data.mem_mib, raised.data.from_mem_mib) == (32 * GIB, 16 * GIB)  # type: ignore[attr-defined]
        resized = await poll(
            lambda: stack.of_type("VmResized"), lambda es: len(es) == 1, what="VmResized"
        )
        assert resized[0].data.mem_mib == 32 * GIB  # type: ignore[attr-defined]
        ledger = await stack.ledger()
        assert ledger.held("elastic") is not None
        assert ledger.held("elastic").mem_mib == 32 * GIB  # type: ignore[union-attr]
        assert not ledger.holds("filler")


async def test_bad_requests_are_refused_with_a_reason_and_nothing_reserved() -> None:
    async with memory_stack(hosts=1, ha_failures=0) as stack:
        c = stack.client

        async def refused(command: object) -> str:
            [answer] = await c.send_and_wait(command, timeout=5)  # type: ignore[arg-type]
            assert isinstance(answer.data, CommandRejected), answer
            return answer.data.code

        both = PlacementRules(
            vm_affinity=Affinity(must=["db"]), vm_anti_affinity=Affinity(should=["db"])
        )
        assert (
            await refused(PlaceVm(vm="a", priority=Owner.LOW, cpu=1, mem_mib=64, rules=both))
            == "contradictory-rules"
        )
        assert (
            await refused(PlaceVm(vm="b", priority=Owner.LOW, cpu=1, mem_mib=64, min_mem_mib=128))
            == "invalid-request"
        )
        nowhere = PlacementRules(host_affinity=Affinity(must=["h9"]))
        assert (
            await refused(PlaceVm(vm="c", priority=Owner.LOW, cpu=1, mem_mib=64, rules=nowhere))
            == "unknown-host"
        )
        assert (
            await refused(PlaceVm(vm="d", priority=Owner.HIGH, cpu=64, mem_mib=64))
            == "insufficient-capacity"
        )
        assert (
            await refused(PlaceVm(vm="e", priority=Owner.HIGH, cpu=1, mem_mib=1024 * GIB))
            == "insufficient-capacity"
        )
        driven = PlaceVm(vm="f", priority=Owner.LOW, cpu=1, mem_mib=64, inputs=GuestInputs())
        assert await refused(driven) == "accounting-only"
        assert await refused(SetMaintenance(host="h1", on=True)) == "last-usable-host"
        assert await refused(SetMaintenance(host="h7", on=True)) == "unknown-host"
        assert await refused(SetMaintenance(host="h1", on=False)) == "wrong-state"
        assert await refused(MigrateVm(vm="ghost", priority=Owner.LOW)) == "unknown-vm"
        same = CopyFile(
            copy_id="c1", priority=Owner.LOW, source="h1", target="h1", size_mib=10, rate_mbps=100
        )
        assert await refused(same) == "invalid-request"
        assert (
            await stack.of_type("CapacityReserved", "PlacementRequested", "MaintenanceStarted")
            == []
        )


async def test_maintenance_migrates_every_vm_off_the_host_and_releases_what_it_held() -> None:
    async with memory_stack(hosts=3, ha_failures=0, rebalance_threshold=1.0) as stack:
        for i in range(6):
            await stack.client.send(PlaceVm(vm=f"v{i}", priority=Owner.LOW, cpu=1, mem_mib=2 * GIB))
        await placed(stack, 6)
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 6, what="created")
        ledger = await stack.ledger()
        host = ledger.located["v0"]
        leaving = sorted(vm for vm, h in ledger.located.items() if h == host)

        [started] = await stack.client.send_and_wait(SetMaintenance(host=host, on=True))
        assert started.type == "MaintenanceStarted", started
        assert len(started.data.migrations) == len(leaving)  # type: ignore[attr-defined]
        await poll(
            lambda: stack.of_type("HostEvacuated"), lambda es: len(es) == 1, what="HostEvacuated"
        )
        done = await stack.of_type("MigrationCompleted")
        assert sorted(e.data.vm for e in done) == leaving  # type: ignore[attr-defined]
        # Planned once, reserved once: each migration's reservations are taken one time
        # each, and every VM's migration takes as many as any other's.
        taken = [
            e.data
            for e in await stack.of_type("CapacityReserved")
            if isinstance(e.data, CapacityReserved) and e.data.purpose != "vm"
        ]
        names = Counter(r.reservation for r in taken)
        assert max(names.values()) == 1, names.most_common(3)
        per_vm = Counter(r.workload for r in taken)
        assert sorted(per_vm) == leaving
        assert len(set(per_vm.values())) == 1, per_vm
        ledger = await poll(
            stack.ledger,
            lambda led: not any(r.endswith(("-in", "-out")) for r in led.located),
            what="migration reservations released",
        )
        assert not ledger.reservations[host]
        assert all(ledger.located[vm] != host for vm in leaving)
        # The hosts agree: the VMs run elsewhere now.
        hosts_moved = {e.data.vm: e.data.target for e in done}  # type: ignore[attr-defined]
        assert all(target != host for target in hosts_moved.values())

        # A host in maintenance takes no new VM.
        await stack.client.send(PlaceVm(vm="new", priority=Owner.HIGH, cpu=1, mem_mib=GIB))
        [new] = await poll(
            lambda: stack.events(lambda e: e.subject == "vm/new" and e.type == "VmPlaced"),
            lambda es: len(es) == 1,
            what="new placed",
        )
        assert new.data.host != host  # type: ignore[attr-defined]
        assert new.data.filtered["state"] == 1  # type: ignore[attr-defined]
        [ended] = await stack.client.send_and_wait(SetMaintenance(host=host, on=False))
        assert ended.type == "MaintenanceEnded"


async def test_a_copy_holds_bandwidth_on_both_ends_until_it_completes() -> None:
    async with memory_stack(hosts=2, ha_failures=0, speed=4.0) as stack:
        copy = CopyFile(
            copy_id="iso",
            priority=Owner.LOW,
            source="h1",
            target="h2",
            size_mib=500,
            rate_mbps=4000,
        )
        [queued] = await stack.client.send_and_wait(copy)
        assert queued.type == "CopyRequested"
        [scheduled] = await poll(
            lambda: stack.of_type("CopyScheduled"), lambda es: len(es) == 1, what="scheduled"
        )
        assert scheduled.data.expected_seconds == 1.0  # type: ignore[attr-defined]
        during = await stack.ledger()
        assert during.held("iso-out").net_mbps == 4000  # type: ignore[union-attr]
        assert during.held("iso-in").host == "h2"  # type: ignore[union-attr]
        await poll(lambda: stack.of_type("CopyCompleted"), lambda es: len(es) == 1, what="copied")
        after = await poll(
            stack.ledger,
            lambda led: not led.holds("iso-out") and not led.holds("iso-in"),
            what="copy reservations released",
        )
        assert after.free("h1") == after.capacity["h1"]


async def test_a_requested_migration_moves_the_vm_and_its_reservation() -> None:
    async with memory_stack(hosts=2, ha_failures=0, rebalance_threshold=1.0) as stack:
        await stack.client.send(PlaceVm(vm="web", priority=Owner.LOW, cpu=2, mem_mib=4 * GIB))
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 1, what="created")
        source = (await stack.ledger()).located["web"]
        target = "h2" if source == "h1" else "h1"
        [queued] = await stack.client.send_and_wait(
            MigrateVm(vm="web", priority=Owner.LOW, target=target)
        )
        assert queued.type == "MigrationRequested"
        await poll(
            lambda: stack.of_type("MigrationCompleted"), lambda es: len(es) == 1, what="migrated"
        )
        ledger = await poll(
            stack.ledger,
            lambda led: led.located.get("web") == target and len(led.located) == 1,
            what="reservation moved",
        )
        assert ledger.free(source) == ledger.capacity[source]
        assert ledger.held("web").mem_mib == 4 * GIB  # type: ignore[union-attr]


async def test_rebalancing_proposes_migrations_that_shrink_the_spread() -> None:
    async with memory_stack(hosts=2, ha_failures=0, rebalance_threshold=0.3) as stack:
        for i in range(4):
            await stack.client.send(
                PlaceVm(
                    vm=f"p{i}",
                    priority=Owner.LOW,
                    cpu=8,
                    mem_mib=GIB,
                    policy=PlacementPolicy.BINPACK,
                )
            )
        [proposal] = await poll(
            lambda: stack.of_type("RebalanceProposed"), lambda es: len(es) >= 1, what="proposal"
        )
        assert proposal.data.spread_before > 0.3  # type: ignore[attr-defined]
        assert proposal.data.spread_after < proposal.data.spread_before  # type: ignore[attr-defined]
        moves = len(proposal.data.migrations)  # type: ignore[attr-defined]
        await poll(
            lambda: stack.of_type("MigrationCompleted"), lambda es: len(es) >= moves, what="moved"
        )
        ledger = await poll(
            stack.ledger,
            lambda led: not any(r.endswith(("-in", "-out")) for r in led.located),
            what="settled",
        )
        used = [ledger.capacity[h].cpu_mhz - ledger.free(h).cpu_mhz for h in ("h1", "h2")]
        assert abs(used[0] - used[1]) <= 16_000


async def test_maintenance_moves_a_pair_that_must_stay_together_to_one_host() -> None:
    async with memory_stack(hosts=3, ha_failures=0, rebalance_threshold=1.0) as stack:
        await stack.client.send(PlaceVm(vm="web", priority=Owner.HIGH, cpu=2, mem_mib=2 * GIB))
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 1, what="web")
        together = PlacementRules(vm_affinity=Affinity(must=["web"]))
        await stack.client.send(
            PlaceVm(vm="db", priority=Owner.LOW, cpu=2, mem_mib=4 * GIB, rules=together)
        )
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="db")
        host = (await stack.ledger()).located["web"]

        [started] = await stack.client.send_and_wait(SetMaintenance(host=host, on=True))
        assert started.type == "MaintenanceStarted", started
        await poll(lambda: stack.of_type("HostEvacuated"), lambda es: len(es) == 1, what="empty")
        assert await stack.of_type("MigrationRefused") == []
        ledger = await poll(
            stack.ledger,
            lambda led: not any(r.endswith(("-in", "-out")) for r in led.located),
            what="settled",
        )
        assert ledger.located["web"] == ledger.located["db"] != host


async def test_vm_rules_bind_both_ways_in_placement_and_maintenance() -> None:
    """b must be apart from a: a VM placed or moved later keeps to b's rule too, even
    though its own request names nothing."""
    async with memory_stack(hosts=3, ha_failures=0, rebalance_threshold=1.0) as stack:
        apart = PlacementRules(vm_anti_affinity=Affinity(must=["a"]))
        near = PlacementRules(vm_affinity=Affinity(must=["a"]))
        await stack.client.send(
            PlaceVm(vm="b", priority=Owner.LOW, cpu=1, mem_mib=GIB, rules=apart)
        )
        await stack.client.send(PlaceVm(vm="c", priority=Owner.LOW, cpu=1, mem_mib=GIB, rules=near))
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="b, c")
        await stack.client.send(PlaceVm(vm="a", priority=Owner.LOW, cpu=1, mem_mib=GIB))
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 3, what="a")
        ledger = await stack.ledger()
        assert ledger.located["a"] != ledger.located["b"]
        assert ledger.located["a"] == ledger.located["c"]

        await stack.client.send_and_wait(SetMaintenance(host=ledger.located["a"], on=True))
        await poll(lambda: stack.of_type("HostEvacuated"), lambda es: len(es) == 1, what="empty")
        ledger = await poll(
            stack.ledger,
            lambda led: not any(r.endswith(("-in", "-out")) for r in led.located),
            what="settled",
        )
        assert ledger.located["a"] != ledger.located["b"]
        assert ledger.located["a"] == ledger.located["c"]


async def test_the_cheapest_hosts_to_empty_go_into_maintenance() -> None:
    async with memory_stack(hosts=3, ha_failures=0, rebalance_threshold=1.0) as stack:
        counts = {"h1": 3, "h2": 1, "h3": 2}
        for host, count in counts.items():
            for i in range(count):
                # h2's one VM may run nowhere else; the others only prefer their host.
                on = Affinity(must=[host]) if host == "h2" else Affinity(should=[host])
                await stack.client.send(
                    PlaceVm(
                        vm=f"{host}v{i}",
                        priority=Owner.LOW,
                        cpu=1,
                        mem_mib=GIB,
                        rules=PlacementRules(host_affinity=on),
                    )
                )
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 6, what="created")
        [refused] = await stack.client.send_and_wait(MaintainCheapest(count=3))
        assert refused.data.code == "cannot-evacuate"  # type: ignore[attr-defined]
        # h2's VM must stay on h2: no host can be emptied of it, so h3 is the cheapest.
        [started, *_] = await stack.client.send_and_wait(MaintainCheapest(count=1))
        assert started.type == "MaintenanceStarted"
        assert started.data.host == "h3"  # type: ignore[attr-defined]


async def test_a_repeated_request_is_refused_alone_and_the_first_is_placed() -> None:
    """A second PlaceVm for a VM is refused (already-exists), sent back to back with the
    first or after the first was placed; the refusal leaves the first request alone: it is
    placed and created once, and its reservation stays."""
    async with memory_stack(hosts=2, ha_failures=0) as stack:
        c = stack.client
        ask = PlaceVm(vm="twin", priority=Owner.HIGH, cpu=1, mem_mib=256)
        first = await c.send(ask)
        again = await c.send(ask)
        await poll(
            lambda: stack.events(lambda e: e.subject == "vm/twin" and e.type == "VmCreated"),
            lambda es: len(es) == 1,
            what="twin created",
        )
        late = await c.send(ask.model_copy(update={"priority": Owner.LOW}))
        await poll(
            lambda: stack.of_type("CommandRejected"), lambda es: len(es) == 2, what="2 refusals"
        )
        refusals = await stack.of_type("CommandRejected")
        assert {e.data.command_id for e in refusals} == {again.id, late.id}  # type: ignore[attr-defined]
        assert {e.data.code for e in refusals} == {"already-exists"}  # type: ignore[attr-defined]
        [placed] = await stack.of_type("VmPlaced")
        assert placed.causation_id is not None
        [requested] = await stack.events(lambda e: e.id == placed.causation_id)
        assert requested.causation_id == first.id
        assert "twin" in (await stack.ledger()).located
        assert len(await stack.of_type("VmCreated")) == 1
