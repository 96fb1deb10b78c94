"""The migration coordinator with the hosts and schedulers, on the in-memory bus: real
guest memory moves in rounds while the guest writes, and arrives byte for byte."""

from __future__ import annotations

from schemas import Envelope, Message
from schemas.memory import GetVmMemory, VmMemory
from schemas.migration import MigrationRoundDone
from schemas.pool import Owner
from schemas.scheduling import MigrateVm, PlaceVm
from schemas.transfers import MigrationCompleted
from schemas.vm import GuestWrites, MemoryMode
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

GIB = 1024


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
