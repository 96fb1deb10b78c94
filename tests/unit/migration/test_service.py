"""The migration coordinator with the hosts and schedulers, on the in-memory bus: real
guest memory moves in rounds while the guest writes, and arrives byte for byte."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from schemas import Envelope, Message
from schemas.host import CrashHost
from schemas.memory import GetVmMemory, VmMemory
from schemas.migration import MigrationRoundDone
from schemas.pool import Owner
from schemas.queries import ListVms, VmList
from schemas.scheduling import Affinity, MigrateVm, PlacementRules, PlaceVm, SetMaintenance
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import MigrationAborted, MigrationCompleted, MigrationMode
from schemas.vm import GuestWrites, MemoryMode, VmState
from services.migration.convergence import DEVICE_STATE_BYTES
from shared.clock import StackClock
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

GIB = 1024


def placement(stack: Stack) -> Callable[[], Awaitable[list[tuple[str, str]]]]:
    async def fetch() -> list[tuple[str, str]]:
        vms = await stack.client.query(ListVms())
        assert isinstance(vms, VmList)
        return [(v.vm, v.host) for v in vms.vms]

    return fetch


def placement_and_state(stack: Stack) -> Callable[[], Awaitable[list[tuple[str, str, VmState]]]]:
    async def fetch() -> list[tuple[str, str, VmState]]:
        vms = await stack.client.query(ListVms())
        assert isinstance(vms, VmList)
        return [(v.vm, v.host, v.state) for v in vms.vms]

    return fetch


async def _now(clock: StackClock) -> float:
    return clock.now()


def on(host: str) -> PlacementRules:
    return PlacementRules(host_affinity=Affinity(must=[host]))


async def _placed(stack: Stack, vm: str, mem_mib: int, writes: GuestWrites | None) -> str:
    await stack.client.send(
        PlaceVm(
            vm=vm,
            priority=Owner.LOW,
            cpu=2,
            mem_mib=mem_mib,
            memory_mode=MemoryMode.FULL,
            seed=7,
            writes=writes,
        )
    )
    await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) >= 1, what="created")
    return (await stack.ledger()).located[vm]


async def _ended(stack: Stack, *types: str) -> Envelope[Message]:
    [end] = await poll(
        lambda: stack.of_type(*types), lambda es: len(es) == 1, timeout=30, what=str(types)
    )
    return end


async def test_a_writing_guest_arrives_byte_for_byte_as_it_was_at_the_stun() -> None:
    async with memory_stack(hosts=2, ha_failures=0, rebalance_threshold=1.0) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=4_000))
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target))
        end = await _ended(stack, "MigrationCompleted", "MigrationAborted")
        done = end.data
        assert isinstance(done, MigrationCompleted), done
        assert done.checksums_equal is True
        assert done.checksum_at_stun == done.checksum_on_target
        [live] = [e.data for e in await stack.of_type("MigrationRoundDone")]
        assert isinstance(live, MigrationRoundDone)
        # The guest wrote while round 0 was on the wire: those pages, and only those, went
        # in the stop-and-copy.
        assert live.dirty_pages_left > 0
        sent = [e.data for e in await stack.of_type("MigrationRoundSent")]
        assert [s.figures.live for s in sent] == [True, False]  # type: ignore[attr-defined]
        assert sent[1].figures.pages == live.dirty_pages_left  # type: ignore[attr-defined]
        assert done.rounds == 2
        # What each host computed itself: the source as it stunned the guest, the target
        # once the last pages were in.
        [stunned] = [e.data for e in await stack.of_type("VmStunned")]
        imported = [e.data for e in await stack.of_type("PagesImported")]
        assert stunned.checksum == imported[-1].checksum == done.checksum_at_stun  # type: ignore[attr-defined]
        await poll(placement(stack), lambda found: found == [("db", target)], what="on target")
        memory = await stack.client.query(GetVmMemory(vm="db"))
        assert isinstance(memory, VmMemory)
        assert (memory.host, memory.pages) == (target, 256 * 256)
        assert done.downtime_ms <= 300


async def test_a_guest_dirtying_faster_than_the_link_converges_only_once_throttled() -> None:
    # 1 Gbit/s moves ~30,500 pages a second; the guest writes 60,000 pages a second
    # spread over all of its memory.
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=1_000
    ) as stack:
        writes = GuestWrites(pages_per_s=60_000, hot_fraction=1.0)
        source = await _placed(stack, "hot", 256, writes)
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(MigrateVm(vm="hot", priority=Owner.LOW, target=target))
        end = await _ended(stack, "MigrationCompleted", "MigrationAborted")
        done = end.data
        assert isinstance(done, MigrationCompleted), done
        assert done.checksums_equal is True
        raised = [e.data for e in await stack.of_type("MigrationThrottleRaised")]
        steps = [r.throttle for r in raised]  # type: ignore[attr-defined]
        assert steps == sorted(steps)
        assert steps[0] == 0.2
        assert done.max_throttle == steps[-1]
        assert done.downtime_ms <= 300
        rounds = [e.data for e in await stack.of_type("MigrationRoundDone")]
        # Unthrottled, the rounds did not shrink below the limit; throttled, they did.
        first_throttled = raised[0].after_round  # type: ignore[attr-defined]
        before = [r.dirty_pages_left for r in rounds[: first_throttled + 1]]  # type: ignore[attr-defined]
        assert min(before) * 4096 / (1_000e6 / 8) > 0.3


async def _sent_and_waited(stack: Stack, cmd: MigrateVm) -> Envelope[Message]:
    """Send ``cmd`` and return how its workflow ended: the migration's end, a refusal."""
    return await stack.client.send_until(
        cmd, "MigrationCompleted", "MigrationAborted", "MigrationRefused", timeout=30
    )


async def test_a_target_that_crashes_mid_migration_aborts_it_and_the_vm_runs_on() -> None:
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=50
    ) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=1_000))
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target))
        # Round 0 at 50 Mbit/s lasts 34 emulated seconds: crash the target meanwhile.
        await poll(lambda: stack.of_type("MigrationRoundSent"), bool, what="round 0 sent")
        await stack.client.send(CrashHost(host=target))
        end = await _ended(stack, "MigrationCompleted", "MigrationAborted")
        aborted = end.data
        assert isinstance(aborted, MigrationAborted)
        assert f"target host {target} crashed" in aborted.reason
        assert not aborted.vm_lost
        # It runs on at the source (that its memory is as it was is the integration
        # test's, with a VM that is off: a running guest's memory changes meanwhile).
        vms = await stack.client.query(ListVms())
        assert isinstance(vms, VmList)
        [db] = vms.vms
        assert (db.host, db.state) == (source, VmState.ON)
        await poll(
            stack.ledger,
            lambda led: not any(name.endswith(("-in", "-out")) for name in led.located),
            what="the migration's reservations released",
        )


async def test_a_coordinator_restarted_mid_migration_ends_it_once() -> None:
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=200
    ) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=20_000))
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target))
        await poll(lambda: stack.of_type("MigrationRoundDone"), bool, what="a round done")
        await stack.restart("migration-coordinator")
        end = await _ended(stack, "MigrationCompleted", "MigrationAborted")
        assert isinstance(end.data, MigrationCompleted), end.data
        assert end.data.checksums_equal is True
        rounds = [e.data.figures.round for e in await stack.of_type("MigrationRoundDone")]  # type: ignore[attr-defined]
        assert rounds == sorted(set(rounds)), "each round done once"
        # (The hosts fold the end a moment after it is in the log.)
        await poll(placement(stack), lambda found: found == [("db", target)], what="on target")


async def test_bad_migrations_get_a_typed_refusal() -> None:
    async with memory_stack(
        hosts=3, ha_failures=0, rebalance_threshold=1.0, migration_mbps=50
    ) as stack:
        source = await _placed(stack, "db", 256, None)
        others = [h for h in ("h1", "h2", "h3") if h != source]
        await stack.client.send(
            PlaceVm(vm="acct", priority=Owner.LOW, cpu=1, mem_mib=512, rules=on(source))
        )
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="acct")
        # Post-copy pulls pages on demand: a VM without memory bytes has none to pull.
        refused = await _sent_and_waited(
            stack,
            MigrateVm(vm="acct", priority=Owner.LOW, target=others[0], mode=MigrationMode.POSTCOPY),
        )
        assert isinstance(refused.data, CommandRejected), refused.data
        assert refused.data.code == RejectionCode.ACCOUNTING_ONLY
        # A target in maintenance takes no VM.
        [started] = await stack.client.send_and_wait(SetMaintenance(host=others[1], on=True))
        assert started.type == "MaintenanceStarted"
        [refused] = await stack.client.send_and_wait(
            MigrateVm(vm="db", priority=Owner.LOW, target=others[1])
        )
        assert isinstance(refused.data, CommandRejected)
        assert (refused.data.code, "maintenance" in refused.data.reason) == (
            RejectionCode.WRONG_STATE,
            True,
        )
        # A VM that is migrating already.
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=others[0]))
        await poll(lambda: stack.of_type("MigrationRoundSent"), bool, what="moving")
        [refused] = await stack.client.send_and_wait(
            MigrateVm(vm="db", priority=Owner.LOW, target=others[0])
        )
        assert isinstance(refused.data, CommandRejected)
        assert refused.data.code == RejectionCode.WRONG_STATE
        assert "already moving" in refused.data.reason


async def test_zero_pages_travel_as_markers_and_large_pages_arrive_whole() -> None:
    async with memory_stack(hosts=2, ha_failures=0, rebalance_threshold=1.0) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=0))
        before = await stack.client.query(GetVmMemory(vm="db"))
        assert isinstance(before, VmMemory)
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target))
        done = (await _ended(stack, "MigrationCompleted", "MigrationAborted")).data
        assert isinstance(done, MigrationCompleted), done
        # The guest's zero pages cost no bytes on the wire...
        assert done.zero_pages > 0
        carried = done.pages - done.zero_pages - done.mapped_pages
        assert done.bytes == carried * 4096 + done.mapped_pages * 16 + DEVICE_STATE_BYTES
        await poll(placement(stack), lambda found: found == [("db", target)], what="on target")
        after = await stack.client.query(GetVmMemory(vm="db"))
        assert isinstance(after, VmMemory)
        # ... and on the target every 2 MiB large page is one whole large page, as it
        # was on the source.
        assert after.whole_large_pages == before.whole_large_pages == 128
        assert done.checksums_equal is True


async def _moved_after_a_warm_up(
    mode: MigrationMode, writes: GuestWrites | None = None
) -> MigrationCompleted:
    """A guest that has run a while (its hot pages are hot) moved in ``mode``."""
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=1_000, tick_seconds=0.1
    ) as stack:
        source = await _placed(stack, "db", 256, writes or GuestWrites(pages_per_s=8_000))
        target = "h2" if source == "h1" else "h1"
        # Ten ticks of work (5 emulated seconds each): the hot set's heat rises well above
        # the rest's.
        clock = stack.running["hosts"].runtime.definition.clock
        await poll(lambda: _now(clock), lambda now: now >= 10 * 5, what="ten ticks")
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target, mode=mode))
        done = (await _ended(stack, "MigrationCompleted", "MigrationAborted")).data
        assert isinstance(done, MigrationCompleted), done
        switched = await stack.of_type("MigrationSwitchedOver")
        assert len(switched) == 1
        await poll(placement(stack), lambda found: found == [("db", target)], what="on target")
        return done


async def test_post_copy_switches_over_at_once_and_pulls_what_the_guest_faults_on() -> None:
    done = await _moved_after_a_warm_up(MigrationMode.POSTCOPY)
    assert done.mode == MigrationMode.POSTCOPY
    # The target's memory is the source's at the stop with the target's own runs replayed
    # on it: every write the guest made before its page arrived landed on that page.
    assert done.checksums_equal is True
    assert done.checksum_on_target == done.checksum_replayed
    assert done.remote_faults > 0
    assert done.downtime_ms < 10
    assert done.full_speed_s is not None
    assert 0 < done.full_speed_s <= done.total_s


async def test_hybrid_sends_the_hot_pages_first_and_faults_less_than_post_copy() -> None:
    hybrid = await _moved_after_a_warm_up(MigrationMode.HYBRID)
    post = await _moved_after_a_warm_up(MigrationMode.POSTCOPY)
    assert hybrid.checksums_equal is True
    assert hybrid.rounds >= 3  # the hot pages, the stop, then the rest after the switchover
    assert hybrid.remote_faults < post.remote_faults / 2, (hybrid.remote_faults, post.remote_faults)


async def test_a_source_that_crashes_during_post_copy_takes_the_vm_with_it() -> None:
    """Post-copy's known risk: after the switchover the VM's pages are split between the
    two hosts; when the source fails the VM is lost, and the event says so."""
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=50
    ) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=1_000))
        target = "h2" if source == "h1" else "h1"
        await stack.client.send(
            MigrateVm(vm="db", priority=Owner.LOW, target=target, mode=MigrationMode.POSTCOPY)
        )
        await poll(lambda: stack.of_type("MigrationRoundDone"), bool, what="a round after it")
        await stack.client.send(CrashHost(host=source))
        aborted = (await _ended(stack, "MigrationCompleted", "MigrationAborted")).data
        assert isinstance(aborted, MigrationAborted), aborted
        assert aborted.vm_lost
        assert f"source host {source} crashed" in aborted.reason
        vms = await poll(
            placement_and_state(stack),
            lambda found: found == [("db", target, VmState.OFF)],
            what="lost on the target",
        )
        assert vms == [("db", target, VmState.OFF)]


async def test_pages_that_hold_disk_blocks_travel_as_mappings_read_from_the_datastore() -> None:
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, tick_seconds=0.1
    ) as stack:
        source = await _placed(stack, "db", 256, GuestWrites(pages_per_s=0))
        target = "h2" if source == "h1" else "h1"

        async def cached() -> int:
            memory = await stack.client.query(GetVmMemory(vm="db"))
            assert isinstance(memory, VmMemory)
            return memory.mapped_pages

        # The guest's disk reads land in its page cache, a few ticks' worth.
        await poll(cached, lambda n: n > 500, what="pages holding disk blocks")
        await stack.client.send(MigrateVm(vm="db", priority=Owner.LOW, target=target))
        done = (await _ended(stack, "MigrationCompleted", "MigrationAborted")).data
        assert isinstance(done, MigrationCompleted), done
        assert done.checksums_equal is True
        # (Those whose block is all zeros go as zero markers: cheaper still.)
        assert done.mapped_pages > 100
        # Each crossed as its block's name, which the target read from the datastore.
        imported = [e.data for e in await stack.of_type("PagesImported")]
        assert sum(i.mapped_pages for i in imported) == done.mapped_pages  # type: ignore[attr-defined]
        carried = done.pages - done.zero_pages - done.mapped_pages
        assert done.bytes == carried * 4096 + done.mapped_pages * 16 + DEVICE_STATE_BYTES


async def test_a_hybrid_stop_resends_what_fits_the_downtime_and_hands_the_rest_on() -> None:
    """A guest that writes all of its memory fast: everything is hot, and much of it is
    written again while it crosses. The stop resends what fits the downtime; the rest is
    stale on the target and follows the switchover like any page not sent."""
    writes = GuestWrites(pages_per_s=45_000, hot_fraction=1.0)
    done = await _moved_after_a_warm_up(MigrationMode.HYBRID, writes)
    assert done.downtime_ms <= 300
    assert done.checksums_equal is True
    assert done.remote_faults > 0


async def test_a_migration_that_cannot_converge_gives_up_and_the_vm_runs_on() -> None:
    """A 1 ms limit is less than the device state alone takes at 1 Gbit/s: the rounds
    never fit it, throttled or not. The coordinator gives up, saying why, and the VM runs
    on at the source (unthrottled: test_hosts_migrations), its reservations released."""
    async with memory_stack(
        hosts=2, ha_failures=0, rebalance_threshold=1.0, migration_mbps=1_000
    ) as stack:
        source = await _placed(stack, "hot", 64, GuestWrites(pages_per_s=60_000, hot_fraction=1.0))
        target = "h2" if source == "h1" else "h1"
        cmd = MigrateVm(vm="hot", priority=Owner.LOW, target=target, downtime_ms=1)
        aborted = (await _sent_and_waited(stack, cmd)).data
        assert isinstance(aborted, MigrationAborted), aborted
        assert "did not converge" in aborted.reason
        assert not aborted.vm_lost
        assert aborted.rounds > 3
        assert await stack.of_type("MigrationSwitchingOver") == []
        await poll(
            placement_and_state(stack),
            lambda found: found == [("hot", source, VmState.ON)],
            what="running at the source",
        )
        await poll(
            stack.ledger,
            lambda led: not any(name.endswith(("-in", "-out")) for name in led.located),
            what="the migration's reservations released",
        )
