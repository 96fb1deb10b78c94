"""The page-sharing daemon with the hosts and schedulers, on the in-memory bus: what it
shares is what a brute-force count finds, forks map their template, bad requests are
refused, and a killed daemon or restarted hosts lose nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import pytest
from prometheus_client import REGISTRY

from schemas import Envelope, Message
from schemas.memory import GetVmMemory, PagePair, PagesShared, VmMemory
from schemas.pool import Owner
from schemas.scheduling import Affinity, MigrateVm, PlacementRules, PlaceVm
from schemas.service import CommandRejected, RejectionCode
from schemas.sharing import (
    ForkVm,
    HostSharing,
    ListSharing,
    ReadPolicy,
    SetSharingPolicy,
    SharingPassCompleted,
    SharingReport,
    SharingTelemetry,
    VmTemplated,
)
from schemas.transfers import MigrationCompleted
from schemas.vm import DestroyVm, MemoryMode, PowerOnVm, VmCreated
from services.hosts.memory import HostMemory, VmSpec
from shared.bus import Logged, Stream
from shared.testing import poll
from tests.unit.sharing.support import duplicates
from tests.unit.stack import Stack, memory_stack


def one_host(pages_per_second: float = 200_000) -> AbstractAsyncContextManager[Stack]:
    return memory_stack(
        hosts=1,
        sharing=True,
        ha_failures=0,
        rebalance_threshold=1.0,
        sharing_pages_per_second=pages_per_second,
    )


async def _passes(stack: Stack) -> list[int]:
    out = []
    for env in await stack.of_type("SharingPassCompleted"):
        assert isinstance(env.data, SharingPassCompleted)
        out.append(env.data.full_scans)
    return out


GUESTS = (("web1", 1, "linux"), ("web2", 2, "linux"), ("win", 3, "windows"))
MIB = 32


async def _place(
    stack: Stack,
    vm: str,
    seed: int,
    template: str,
    *,
    power_on: bool = False,
    mode: MemoryMode = MemoryMode.FULL,
) -> None:
    await stack.client.send(
        PlaceVm(
            vm=vm,
            priority=Owner.LOW,
            cpu=1,
            mem_mib=MIB,
            memory_mode=mode,
            seed=seed,
            template=template,
            power_on=power_on,
            rules=PlacementRules(host_affinity=Affinity(must=["h1"])),
        )
    )


async def _created(stack: Stack, count: int) -> list[Envelope[Message]]:
    return await poll(
        lambda: stack.of_type("VmCreated"), lambda es: len(es) >= count, what="created"
    )


async def _h1(stack: Stack) -> HostSharing:
    reply = await stack.client.query(ListSharing())
    assert isinstance(reply, SharingReport)
    return next(h for h in reply.hosts if h.host == "h1")


def _expected(guests: Sequence[tuple[str, int, str]]) -> int:
    """The duplicates among the guests' seeded pages, counted byte for byte apart from
    the stack (they are powered off: nothing writes them)."""
    mem = HostMemory([64, 64])
    for name, seed, template in guests:
        mem.create_vm(VmSpec(name, MIB // 2, seed=seed, template=template))
    return duplicates(mem, mem.vms)


def _members(shared: list[Envelope[Message]]) -> list[tuple[str, int]]:
    pairs: list[PagePair] = []
    for env in shared:
        assert isinstance(env.data, PagesShared)
        pairs += env.data.pairs
    return [(p.vm_b, p.page_b) for p in pairs]


async def test_the_daemon_saves_what_a_brute_force_count_of_duplicates_finds() -> None:
    """Idle guests of two templates: once the daemon has passed over the host twice, the
    frames saved equal the duplicate pages counted byte for byte, and no page was shared
    twice."""
    expected = _expected(GUESTS)
    pairs_before = _metric("vplane_sharing_pairs_total")
    async with one_host() as stack:
        samples: list[HostSharing] = []

        async def on_sample(entry: Logged) -> None:
            if entry.envelope is not None and isinstance(entry.envelope.data, SharingTelemetry):
                samples.append(entry.envelope.data.figures)

        await stack.client.bus.watch(Stream.TELEMETRY, ("sharing.>",), on_sample)
        for name, seed, template in GUESTS:
            await _place(stack, name, seed, template)
        await _created(stack, len(GUESTS))
        h1 = await poll(
            lambda: _h1(stack), lambda h: h.pages_sharing == expected, timeout=30, what="saved"
        )
        assert h1.saved_mib == round(expected / 256, 2)
        assert h1.full_scans >= 2
        assert 0 < h1.bookkeeping_mib < h1.saved_mib
        assert h1.net_profit_mib == pytest.approx(h1.saved_mib - h1.bookkeeping_mib, abs=0.011)
        members = _members(await stack.of_type("PagesShared"))
        assert len(members) == len(set(members)) == expected
        passes = await _passes(stack)
        assert passes == list(range(1, len(passes) + 1))
        # Its samples say so too, as each piece of a pass is compared.
        await poll(
            _value(lambda: sum(s.pages_sharing == expected for s in samples)),
            bool,
            what="a sample of the figures converged",
        )
        assert {s.host for s in samples} == {"h1"}
        assert max(s.full_scans for s in samples) >= 2
        # Its metrics count what it did.
        assert _metric("vplane_sharing_pairs_total") - pairs_before == expected
        assert _metric("vplane_sharing_saved_mib") == pytest.approx(expected / 256)


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"host": "h1"}) or 0.0


async def test_a_killed_daemon_resumes_without_sharing_a_page_twice_or_losing_a_count() -> None:
    """Killed after its first pass (before any page is shared) and again once some are,
    the daemon goes on from the log: the passes keep counting, every duplicate ends up
    shared exactly once."""
    expected = _expected(GUESTS)
    async with one_host(20_000) as stack:
        for name, seed, template in GUESTS:
            await _place(stack, name, seed, template)
        await _created(stack, len(GUESTS))
        await poll(lambda: stack.of_type("SharingPassCompleted"), bool, timeout=30, what="pass")
        await stack.kill("page-sharing")
        await stack.start("page-sharing")
        await poll(lambda: stack.of_type("PagesShared"), bool, timeout=30, what="shared")
        await stack.kill("page-sharing")
        await stack.start("page-sharing")
        await poll(
            lambda: _h1(stack), lambda h: h.pages_sharing == expected, timeout=60, what="saved"
        )
        members = _members(await stack.of_type("PagesShared"))
        assert len(members) == len(set(members)) == expected
        passes = await _passes(stack)
        assert passes == list(range(1, len(passes) + 1))


async def test_forks_start_with_their_template_and_diverge_only_in_what_they_write() -> None:
    """A fork maps every page of its template (its checksum, no frame of its own); a
    running child's writes change only its own memory; the template cannot be destroyed
    while a child maps it."""
    async with one_host() as stack:
        await _place(stack, "gold", 5, "linux", power_on=True)
        await _created(stack, 1)
        await stack.client.send(ForkVm(parent="gold", children=["c1", "c2"], power_on=False))
        created = await _created(stack, 3)
        [templated] = [e.data for e in await stack.of_type("VmTemplated")]
        assert isinstance(templated, VmTemplated)
        forks = [e.data.vm for e in created if isinstance(e.data, VmCreated) and e.data.fork_of]
        assert sorted(forks) == ["c1", "c2"]
        for child in ("c1", "c2"):
            memory = await stack.client.query(GetVmMemory(vm=child))
            assert isinstance(memory, VmMemory)
            assert memory.checksum == templated.checksum
            assert memory.shared_pages == memory.pages == MIB * 256

        await stack.client.send(PowerOnVm(vm="c1", host="h1"))

        async def checksum(vm: str) -> str | None:
            reply = await stack.client.query(GetVmMemory(vm=vm))
            assert isinstance(reply, VmMemory)
            return reply.checksum

        await poll(lambda: checksum("c1"), lambda c: c != templated.checksum, what="c1 wrote")
        assert await checksum("gold") == templated.checksum == await checksum("c2")

        refusal = await stack.client.send_and_wait(DestroyVm(vm="gold", host="h1"))
        assert isinstance(refusal[0].data, CommandRejected)
        assert refusal[0].data.code == RejectionCode.WRONG_STATE
        assert "fork" in refusal[0].data.reason


async def test_sharing_and_forks_survive_a_restart_of_the_hosts_and_of_the_daemon() -> None:
    """Idle guests, two of them forks: once the daemon has shared every duplicate, the
    hosts rebuilt from the log hold the same frames shared, each fork still its
    template's bytes, and a restarted daemon finds nothing left to share."""
    async with one_host() as stack:
        await _place(stack, "gold", 5, "linux")
        await _place(stack, "win", 3, "windows")
        await _created(stack, 2)
        await stack.client.send(ForkVm(parent="gold", children=["c1", "c2"], power_on=False))
        await _created(stack, 4)
        expected = _expected([("gold", 5, "linux"), ("win", 3, "windows")]) + 2 * MIB * 256
        await poll(
            lambda: _h1(stack), lambda h: h.pages_sharing == expected, timeout=30, what="saved"
        )
        before = {vm: await _memory(stack, vm) for vm in ("gold", "c1", "c2", "win")}
        shared_before = len(await stack.of_type("PagesShared"))
        passes_before = len(await stack.of_type("SharingPassCompleted"))

        await stack.restart("hosts")
        await stack.restart("page-sharing")

        after = {vm: await _memory(stack, vm) for vm in ("gold", "c1", "c2", "win")}
        assert after == before
        assert before["c1"][0] == before["gold"][0]
        await poll(lambda: _h1(stack), lambda h: h.pages_sharing == expected, what="samples")
        await poll(
            lambda: stack.of_type("SharingPassCompleted"),
            lambda es: len(es) >= passes_before + 2,
            timeout=30,
            what="passes after the restart",
        )
        assert not _members((await stack.of_type("PagesShared"))[shared_before:])
        assert not await stack.of_type("GuestMemoryDiverged")


async def _memory(stack: Stack, vm: str) -> tuple[str | None, int]:
    reply = await stack.client.query(GetVmMemory(vm=vm))
    assert isinstance(reply, VmMemory)
    return reply.checksum, reply.shared_pages


async def test_bad_fork_and_policy_requests_are_refused_and_change_nothing() -> None:
    """An unknown or accounting-only parent, a child name in use, a zero window: each a
    typed rejection, and no fork asked for, no policy changed."""
    async with one_host() as stack:
        await _place(stack, "full", 1, "linux")
        await _place(stack, "counted", 2, "linux", mode=MemoryMode.ACCOUNTING)
        await _created(stack, 2)
        cases = [
            (ForkVm(parent="ghost", children=["x"]), RejectionCode.UNKNOWN_VM),
            (ForkVm(parent="counted", children=["x"]), RejectionCode.ACCOUNTING_ONLY),
            (ForkVm(parent="full", children=["counted"]), RejectionCode.ALREADY_EXISTS),
            (
                SetSharingPolicy(policy=ReadPolicy(window_ticks=0)),
                RejectionCode.INVALID_REQUEST,
            ),
            # 8 ticks of 50 emulated seconds: a hold of 300 s would end before them.
            (
                SetSharingPolicy(policy=ReadPolicy(window_ticks=8, hold_s=300)),
                RejectionCode.INVALID_REQUEST,
            ),
        ]
        before = await stack.client.query(ListSharing())
        for cmd, code in cases:
            [answer] = await stack.client.send_and_wait(cmd)
            assert isinstance(answer.data, CommandRejected), answer.data
            assert answer.data.code == code
        assert not await stack.of_type("VmForkRequested", "VmTemplated", "SharingPolicySet")
        reply = await stack.client.query(ListSharing())
        assert isinstance(reply, SharingReport)
        assert isinstance(before, SharingReport)
        assert reply.policy == before.policy
        assert reply.policy.hold_s >= reply.policy.window_ticks * 50


async def test_a_migrated_fork_leaves_as_its_bytes_and_frees_its_template() -> None:
    """A fork moved to another host arrives with its template's checksum (its shared
    pages crossed as bytes); the template, with no child left on its host, can then go."""
    async with memory_stack(
        hosts=2,
        sharing=True,
        ha_failures=0,
        rebalance_threshold=1.0,
        sharing_pages_per_second=50_000,
    ) as stack:
        await _place(stack, "gold", 5, "linux")
        await _created(stack, 1)
        await stack.client.send(ForkVm(parent="gold", children=["c1"], power_on=False))
        await _created(stack, 2)
        [templated] = [e.data for e in await stack.of_type("VmTemplated")]
        assert isinstance(templated, VmTemplated)

        [moved] = [
            await stack.client.send_until(
                MigrateVm(vm="c1", priority=Owner.LOW, target="h2"),
                "MigrationCompleted",
                "MigrationAborted",
                timeout=30,
            )
        ]
        assert isinstance(moved.data, MigrationCompleted), moved.data
        assert moved.data.checksums_equal is True
        memory = await stack.client.query(GetVmMemory(vm="c1"))
        assert isinstance(memory, VmMemory)
        assert (memory.host, memory.checksum) == ("h2", templated.checksum)

        [gone] = await stack.client.send_and_wait(DestroyVm(vm="gold", host="h1"))
        assert gone.type == "VmDestroyed", gone.data


async def test_digests_asked_of_a_host_that_does_not_answer_are_asked_again() -> None:
    """The hosts stopped mid-pass: the daemon's asks fail (it is told so, nothing hangs),
    and once the hosts are back it goes on and shares every duplicate once."""
    expected = _expected(GUESTS)
    # A budget a second's worth of which lasts the daemon through the hosts' absence
    # (their samples move the clock that grows it).
    async with one_host(10_000_000) as stack:
        for name, seed, template in GUESTS:
            await _place(stack, name, seed, template)
        await _created(stack, len(GUESTS))
        await poll(lambda: stack.of_type("SharingPassCompleted"), bool, timeout=30, what="pass")
        await stack.stop("hosts")
        daemon = stack.running["page-sharing"].runtime
        await poll(_value(lambda: daemon.asks_failed), bool, what="a failed ask")
        await stack.start("hosts")
        await poll(
            lambda: _h1(stack), lambda h: h.pages_sharing == expected, timeout=60, what="saved"
        )
        members = _members(await stack.of_type("PagesShared"))
        assert len(members) == len(set(members)) == expected


def _value(read: Callable[[], int]) -> Callable[[], Awaitable[int]]:
    async def fetch() -> int:
        return read()

    return fetch
