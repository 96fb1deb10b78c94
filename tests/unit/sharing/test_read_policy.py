"""The read-pattern policy through the stack: guests that keep reading shared pages get
private copies on their own node, those pages are not shared again while held, and with
the policy off nothing is copied."""

from __future__ import annotations

from schemas import Envelope, Message
from schemas.memory import PagesShared, PagesUnshared
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.sharing import ReadPolicy, SetSharingPolicy, UnshareReason
from schemas.vm import GuestWrites, MemoryMode
from shared.testing import poll
from tests.unit.sharing.test_service import one_host
from tests.unit.stack import Stack

# A reader: it writes nothing, so its hot pages (a tenth of them, nine reads in ten) stay
# shared, each read about once a tick.
READER = GuestWrites(pages_per_s=0)
POLICY = ReadPolicy(reads=4, window_ticks=8, remote_reads=3, hold_s=10_000)


async def _readers(stack: Stack) -> None:
    for vm, seed in (("r1", 1), ("r2", 2)):
        await stack.client.send(
            PlaceVm(
                vm=vm,
                priority=Owner.LOW,
                cpu=1,
                mem_mib=32,
                memory_mode=MemoryMode.FULL,
                seed=seed,
                template="linux",
                writes=READER,
                rules=PlacementRules(host_affinity=Affinity(must=["h1"])),
            )
        )


def _copies(events: list[Envelope[Message]]) -> list[PagesUnshared]:
    return [
        e.data
        for e in events
        if isinstance(e.data, PagesUnshared) and e.data.reason is not UnshareReason.REQUESTED
    ]


async def test_pages_read_often_get_a_private_copy_on_the_readers_node_and_stay_private() -> None:
    """Copies are asked for a reason, land on one node per reader, and no page copied is
    proposed for sharing again while it is held."""
    async with one_host(50_000) as stack:
        [policy_set] = await stack.client.send_and_wait(SetSharingPolicy(policy=POLICY))
        assert policy_set.type == "SharingPolicySet"
        await _readers(stack)
        copies = _copies(
            await poll(
                lambda: stack.of_type("PagesUnshared"),
                lambda es: bool(_copies(es)),
                timeout=30,
                what="copies",
            )
        )
        assert {c.reason for c in copies} <= {
            UnshareReason.READ_PATTERN,
            UnshareReason.REMOTE_READS,
        }
        assert all(c.copied > 0 and c.node is not None for c in copies)
        nodes = {(c.vm, c.node) for c in copies}
        assert len(nodes) == len({vm for vm, _ in nodes})  # one node per reader: its own
        held = {(c.vm, p) for c in copies for p in c.pages}
        # Passes go on after the copies: none of those pages is shared again.
        log = await stack.events(lambda _e: True)
        first_copy = next(i for i, e in enumerate(log) if isinstance(e.data, PagesUnshared))
        seen_passes = len(await stack.of_type("SharingPassCompleted"))
        await poll(
            lambda: stack.of_type("SharingPassCompleted"),
            lambda es: len(es) >= seen_passes + 2,
            timeout=30,
            what="passes after the copies",
        )
        log = await stack.events(lambda _e: True)
        later = [e.data for e in log[first_copy:] if isinstance(e.data, PagesShared)]
        reshared = {
            (vm, page)
            for shared in later
            for p in shared.pairs
            for vm, page in ((p.vm_a, p.page_a), (p.vm_b, p.page_b))
        }
        assert not held & reshared


async def test_with_the_policy_off_no_private_copy_is_made() -> None:
    """The same readers, the policy off: pages stay shared however often they are read."""
    async with one_host(50_000) as stack:
        off = POLICY.model_copy(update={"enabled": False})
        await stack.client.send_and_wait(SetSharingPolicy(policy=off))
        await _readers(stack)
        await poll(
            lambda: stack.of_type("SharingPassCompleted"),
            lambda es: len(es) >= 4,
            timeout=30,
            what="passes",
        )
        assert await stack.of_type("PagesShared")
        assert not _copies(await stack.of_type("PagesUnshared"))
