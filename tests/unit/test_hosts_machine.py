"""The hosts' emulated hardware: contention in telemetry, guest memory following events."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Command, Envelope, Event
from schemas.host import CrashHost, HostRegistered, HostTelemetry
from schemas.memory import GetVmMemory, PagePair, SharePages, SwapInPages, SwapOutPages
from schemas.service import CommandRejected
from schemas.vm import CreateVm, MemoryMode, PowerOffVm, ResizeVm, WorkloadKind
from services.hosts.domain import decide
from services.hosts.handlers import MAX_DIGESTS, FleetHolder, answer_query
from services.hosts.machine import Machine
from services.hosts.state import Fleet, evolve
from shared.bus import PoisonMessage
from tests.reserving import covering


class Harness:
    """A fleet and its machine, driven the way the service drives them."""

    def __init__(self, *hosts: HostRegistered) -> None:
        self.fleet = Fleet()
        self.machine = Machine([h.host for h in hosts])
        self.ticks = 0
        for host in hosts:
            self.fold(host)

    def fold(self, event: Event) -> None:
        before = self.fleet
        self.fleet = evolve(before, event)
        self.machine.apply(before, event)

    def do(self, cmd: Command) -> list[Event]:
        """Reserve what ``cmd`` needs, as its scheduler would, then decide and fold it."""
        if (held := covering(self.fleet, cmd)) is not None:
            self.fold(held)
        env = Envelope.wrap(cmd, producer="test")
        events = decide(self.fleet, env, self.machine.facts(self.fleet))
        for event in events:
            self.fold(event)
        return events

    def tick(self) -> dict[str, HostTelemetry]:
        self.ticks += 1
        out = self.machine.tick(self.fleet, self.ticks, sim_time=float(self.ticks), tick_s=1.0)
        return {t.host: t for t in out}


def small_host(name: str = "h1") -> HostRegistered:
    return HostRegistered(host=name, cpu_cores=2, cpu_mhz=2000, mem_mib=4096, swap_mib=256)


def test_noisy_neighbour_slows_a_steady_vm_until_powered_off() -> None:
    """Beside a noisy neighbour a steady VM's slowdown and cpu.ready rise; they fall back to
    1 and 0 once the neighbour is powered off."""
    h = Harness(small_host())
    h.do(CreateVm(vm="steady", cpu=2, mem_mib=512, host="h1"))
    alone = h.tick()["h1"].vms[0]
    assert (alone.slowdown, alone.cpu_ready_ms) == (1.0, 0.0)

    h.do(CreateVm(vm="noisy", cpu=2, mem_mib=512, host="h1", workload=WorkloadKind.NOISY))
    crowded = {s.vm: s for s in h.tick()["h1"].vms}
    assert crowded["steady"].slowdown > 1.0
    assert crowded["steady"].cpu_ready_ms > 0.0

    h.do(PowerOffVm(vm="noisy", host="h1"))
    after = {s.vm: s for s in h.tick()["h1"].vms}
    assert (after["steady"].slowdown, after["steady"].cpu_ready_ms) == (1.0, 0.0)


def test_crashed_host_stops_publishing() -> None:
    """A crashed host sends no telemetry until it recovers."""
    h = Harness(small_host("h1"), small_host("h2"))
    assert set(h.tick()) == {"h1", "h2"}
    h.do(CrashHost(host="h1"))
    assert set(h.tick()) == {"h2"}


def full_pair() -> Harness:
    h = Harness(HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024))
    for name in ("a", "b"):
        h.do(
            CreateVm(
                vm=name,
                cpu=1,
                mem_mib=16,
                host="h1",
                memory_mode=MemoryMode.FULL,
                template="linux",
                seed=7 if name == "a" else 8,
            )
        )
    return h


def equal_pages(h: Harness, limit: int) -> list[PagePair]:
    """Pages of a and b whose bytes are identical (template and zero pages)."""
    mem = h.machine.memory["h1"]
    da, db = mem.page_digests("a"), mem.page_digests("b")
    where = {int(d): i for i, d in enumerate(db)}
    pairs = []
    for i, d in enumerate(da):
        j = where.get(int(d))
        if j is not None and mem.read("a", i) == mem.read("b", j):
            pairs.append(PagePair(vm_a="a", page_a=i, vm_b="b", page_b=j))
            del where[int(d)]
        if len(pairs) == limit:
            break
    return pairs


def test_sharing_lowers_used_memory_by_exactly_the_shared_pages() -> None:
    """Sharing N equal page pairs frees N frames, and telemetry reports the saving."""
    h = full_pair()
    mem = h.machine.memory["h1"]
    pairs = equal_pages(h, 100)
    assert len(pairs) == 100
    before = mem.used_frames()
    checksums = (mem.checksum("a"), mem.checksum("b"))
    [event] = h.do(SharePages(host="h1", pairs=pairs))
    assert event.type_name() == "PagesShared"
    assert before - mem.used_frames() == 100
    assert (mem.checksum("a"), mem.checksum("b")) == checksums
    assert h.tick()["h1"].mem_shared_saved_mib == 100 * 4 / 1024


def test_sharing_unequal_pages_is_rejected_and_changes_nothing() -> None:
    """Pages whose bytes differ are not shared; the rejection says why; memory is unchanged."""
    h = full_pair()
    mem = h.machine.memory["h1"]
    digests = mem.page_digests("a")
    i, j = int(np.flatnonzero(digests != digests[0])[0]), 0
    before = mem.used_frames()
    [event] = h.do(SharePages(host="h1", pairs=[PagePair(vm_a="a", page_a=i, vm_b="a", page_b=j)]))
    assert isinstance(event, CommandRejected)
    assert event.code == "bytes-differ"
    assert mem.used_frames() == before


def test_crash_regenerates_guest_memory_from_its_seed() -> None:
    """After a crash a full VM's memory is what its seed gives, not what was written."""
    h = full_pair()
    mem = h.machine.memory["h1"]
    fresh = mem.checksum("a")
    for _ in range(3):
        h.tick()  # running guests write pages
    assert mem.checksum("a") != fresh
    h.do(CrashHost(host="h1"))
    assert mem.checksum("a") == fresh


def test_resize_of_a_full_vm_follows_in_guest_memory() -> None:
    """Growing a full VM adds whole large pages to its guest memory."""
    h = full_pair()
    mem = h.machine.memory["h1"]
    pages = mem.spec("a").pages
    h.do(ResizeVm(vm="a", host="h1", mem_mib=32))
    assert mem.spec("a").pages == 2 * pages


def test_swap_draws_thin_files_from_the_thick_reservation() -> None:
    """Swapped-out pages keep their bytes, take blocks from the host's reservation, and
    a swap beyond it is refused with nothing changed."""
    h = Harness(HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024, swap_mib=2))
    h.do(
        CreateVm(vm="a", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL, power_on=False)
    )
    mem = h.machine.memory["h1"]
    checksum = mem.checksum("a")
    [out] = h.do(SwapOutPages(host="h1", vm="a", pages=list(range(300))))
    assert out.type_name() == "PagesSwappedOut"
    assert mem.vm_usage("a").swapped == 300
    assert mem.checksum("a") == checksum
    assert h.tick()["h1"].swap_used_mib == 300 * 4 / 1024
    [refused] = h.do(SwapOutPages(host="h1", vm="a", pages=list(range(300, 600))))
    assert isinstance(refused, CommandRejected)
    assert refused.code == "insufficient-capacity"
    assert mem.vm_usage("a").swapped == 300
    h.do(SwapInPages(host="h1", vm="a", pages=list(range(300))))
    assert mem.vm_usage("a").swapped == 0
    assert mem.checksum("a") == checksum


async def test_digests_are_refused_past_what_a_reply_can_carry() -> None:
    """Asking digests of a VM too large for one reply fails with the reason, not a crash."""
    holder = FleetHolder(["h1"])
    h = Harness(HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024))
    h.do(CreateVm(vm="small", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL))
    h.do(CreateVm(vm="large", cpu=1, mem_mib=64, host="h1", memory_mode=MemoryMode.FULL))
    holder.fleet, holder.machine = h.fleet, h.machine
    small = await answer_query(
        holder, Envelope.wrap(GetVmMemory(vm="small", digests=True), producer="test")
    )
    assert len(small.digests or []) == 4096 <= MAX_DIGESTS  # type: ignore[attr-defined]
    with pytest.raises(PoisonMessage, match="export its pages"):
        await answer_query(
            holder, Envelope.wrap(GetVmMemory(vm="large", digests=True), producer="test")
        )


def test_a_seeded_run_repeats_exactly() -> None:
    """The same VMs and seeds give identical telemetry, tick for tick, in a second run."""

    def run() -> list[HostTelemetry]:
        h = Harness(small_host())
        for name, kind in (
            ("s", WorkloadKind.STEADY),
            ("b", WorkloadKind.BURSTY),
            ("n", WorkloadKind.NOISY),
            ("d", WorkloadKind.DIURNAL),
        ):
            h.do(CreateVm(vm=name, cpu=1, mem_mib=64, host="h1", workload=kind, seed=5))
        return [h.tick()["h1"] for _ in range(20)]

    assert run() == run()


def test_a_page_written_between_the_decision_to_share_it_and_the_fold_stays_apart() -> None:
    """Guests run outside the decision lock: a tick may write a page after the host
    decided to share it and before the event is folded. That pair stays apart (as if
    shared and at once broken by the write: unshared again), the others are shared, and
    nothing is reported diverged."""
    h = full_pair()
    mem = h.machine.memory["h1"]
    digests_a, digests_b = mem.page_digests("a"), mem.page_digests("b")
    common = np.intersect1d(digests_a, digests_b)[:10]
    pairs = [
        PagePair(
            vm_a="a",
            page_a=int(np.flatnonzero(digests_a == d)[0]),
            vm_b="b",
            page_b=int(np.flatnonzero(digests_b == d)[0]),
        )
        for d in common
    ]
    env = Envelope.wrap(SharePages(host="h1", pairs=pairs), producer="test")
    [shared] = decide(h.fleet, env, h.machine.facts(h.fleet))
    mem.write("b", pairs[0].page_b, b"a tick's write")
    used = mem.used_frames()

    h.fold(shared)

    assert not h.machine.diverged
    assert mem.unshared_again == 1
    assert used - mem.used_frames() == len(pairs) - 1
