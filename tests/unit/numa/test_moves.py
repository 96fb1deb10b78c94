"""NUMA moves on the emulated hardware: the vCPUs move, then the memory a step a tick, and
each tick reports how local the guest's accesses have become."""

from __future__ import annotations

from schemas import Envelope, Event
from schemas.host import HostRegistered
from schemas.numa import (
    MoveVmNuma,
    NumaOrder,
    VmNumaMoveCompleted,
    VmNumaMoveProgress,
    VmNumaMoveStarted,
)
from schemas.vm import CreateVm, DestroyVm, MemoryMode, PowerOffVm
from services.hosts.domain import decide
from services.hosts.handlers import FleetHolder, numa_reports, telemetry_step
from services.hosts.machine import Machine
from services.hosts.numa_hardware import SETTLE_TICKS
from services.hosts.state import Fleet, evolve
from tests.reserving import covering
from tests.unit.test_hosts_machine import Harness

HOST = HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=1024, numa_nodes=2)
# 64 MiB over both nodes: 8192 of its 16384 pages are on node 0, where its vCPUs start.
GUEST = CreateVm(vm="a", cpu=1, mem_mib=64, host="h1", memory_mode=MemoryMode.FULL, seed=7)
WARM_TICKS = 10  # the guest's hot set has heat before the move
PACE = 1024  # pages a tick: the move takes 8 ticks


class Logged(Harness):
    """The harness, keeping every event it folds (its log)."""

    def __init__(self, *hosts: HostRegistered) -> None:
        self.log: list[Event] = []
        super().__init__(*hosts)

    def fold(self, event: Event) -> None:
        self.log.append(event)
        super().fold(event)


def warmed() -> Logged:
    h = Logged(HOST)
    h.do(GUEST)
    for _ in range(WARM_TICKS):
        h.tick()
    return h


def moved(
    order: NumaOrder, h: Logged | None = None
) -> tuple[Logged, list[VmNumaMoveProgress], VmNumaMoveCompleted]:
    """A warmed guest moved to node 1 in ``order``; the progress reports and completion."""
    h = h or warmed()
    [started] = h.do(MoveVmNuma(host="h1", vm="a", node=1, order=order, pages_per_tick=PACE))
    assert isinstance(started, VmNumaMoveStarted)
    progress: list[VmNumaMoveProgress] = []
    for _ in range(30):
        h.tick()
        for report, completed in h.machine.numa.drain():
            progress.append(report)
            if completed is not None:
                h.fold(completed)
                return h, progress, completed
    raise AssertionError("the move never completed")


def test_hot_first_reaches_a_higher_local_share_sooner_than_sequential() -> None:
    """On the same seeded guest, moving the hottest pages first makes its accesses local
    at once; page order gets there only as the last pages move."""
    _, hot, hot_done = moved(NumaOrder.HOT_FIRST)
    _, seq, seq_done = moved(NumaOrder.SEQUENTIAL)
    hot_shares = [p.local_share or 0.0 for p in hot]
    seq_shares = [p.local_share or 0.0 for p in seq]

    assert [p.pages_moved for p in hot] == [p.pages_moved for p in seq]
    assert hot_done.local_share_before == seq_done.local_share_before
    # After the first step (1/8 of the pages): most accesses local against about half.
    assert hot_shares[0] > 0.9
    assert seq_shares[0] < 0.65
    # Ahead at every tick of the move, level once it is over.
    moving = 8 - 1
    assert all(h > s for h, s in zip(hot_shares[:moving], seq_shares[:moving], strict=True))
    assert hot_shares[moving:] == seq_shares[moving:] == [1.0] * (SETTLE_TICKS + 1)
    assert sum(hot_shares) > sum(seq_shares) + 1.0


def test_a_move_reports_its_pages_ticks_and_shares() -> None:
    """Every page ends on the node; the completion counts the pages, the ticks reported
    (the move's and a few after) and the split large pages."""
    h, progress, done = moved(NumaOrder.HOT_FIRST)
    mem = h.machine.memory["h1"]

    assert [p.pages_left for p in progress[:8]] == [8192 - PACE * (i + 1) for i in range(8)]
    assert (done.pages_moved, done.pages_left, done.node) == (8192, 0, 1)
    assert done.ticks == len(progress) == 8 + SETTLE_TICKS
    assert done.local_share_before is not None
    assert 0.4 < done.local_share_before < 0.6
    assert done.local_share_after == 1.0
    # Hot pages lie all over the guest: each large page moved lost its 2 MiB backing.
    assert (done.large_pages_whole_before, done.large_pages_whole_after) == (32, 16)
    assert (mem.page_nodes("a") == 1).all()
    assert mem.vcpu_node("a") == 1
    assert h.fleet.numa_moves == {}


def test_a_sequential_move_keeps_large_pages_whole() -> None:
    """Moved in page order, whole large pages at a step, each lands whole in a free block."""
    _, _, done = moved(NumaOrder.SEQUENTIAL)

    assert (done.large_pages_whole_before, done.large_pages_whole_after) == (32, 32)


def test_a_move_leaves_the_guest_bytes_as_a_run_without_one() -> None:
    """Moving pages never changes what the guest wrote: after the same ticks, a guest moved
    either way has the checksum of one left alone."""
    h, progress, _ = moved(NumaOrder.HOT_FIRST)
    seq, _, _ = moved(NumaOrder.SEQUENTIAL)
    still = warmed()
    for _ in progress:
        still.tick()

    checksums = {x.machine.memory["h1"].checksum("a") for x in (h, seq, still)}
    assert len(checksums) == 1


def test_the_same_seed_gives_the_same_figures() -> None:
    """Two moves of the same guest from the same start report the same, tick for tick."""
    _, first, first_done = moved(NumaOrder.HOT_FIRST)
    _, second, second_done = moved(NumaOrder.HOT_FIRST)

    assert (first, first_done) == (second, second_done)


def test_a_vm_that_makes_no_access_reports_no_share() -> None:
    """A powered-off guest's pages still move; its share is none, not a guess."""
    h = warmed()
    h.do(PowerOffVm(vm="a", host="h1"))
    h, progress, done = moved(NumaOrder.SEQUENTIAL, h)

    assert done.pages_moved == 8192
    assert {p.local_share for p in progress} == {None}
    assert done.local_share_after is None


def test_a_move_ends_unreported_when_the_vm_goes() -> None:
    """A destroyed VM's move stops: no more reports, and nothing is under way."""
    h = warmed()
    h.do(PowerOffVm(vm="a", host="h1"))
    h.do(MoveVmNuma(host="h1", vm="a", node=1, pages_per_tick=PACE))
    h.tick()
    h.machine.numa.drain()
    h.do(DestroyVm(vm="a", host="h1"))
    h.tick()

    assert h.machine.numa.drain() == []


def test_rebuilding_puts_a_completed_move_where_the_log_says() -> None:
    """Rebuilt from the log, a move that completed moves the rest of its pages at once."""
    h, _, done = moved(NumaOrder.HOT_FIRST)
    rebuilt, fleet = Machine(["h1"]), Fleet()
    rebuilt.live = False
    for event in h.log:
        before, fleet = fleet, evolve(fleet, event)
        rebuilt.apply(before, event)

    assert done in h.log
    assert (rebuilt.memory["h1"].page_nodes("a") == 1).all()
    assert rebuilt.memory["h1"].vcpu_node("a") == 1


def test_reports_follow_in_the_workflow_of_the_command() -> None:
    """The hosts' telemetry step logs each tick's report caused by the Started event, so a
    client waiting on the command's correlation sees the completion."""
    holder = FleetHolder(["h1"])

    def fold(event: Event, env: Envelope[Event] | None = None) -> None:
        before = holder.fleet
        holder.fleet = evolve(before, event, env)
        holder.machine.apply(before, event)

    fold(HOST)
    held = covering(holder.fleet, GUEST)
    assert held is not None
    fold(held)
    [created] = decide(holder.fleet, Envelope.wrap(GUEST, producer="test"))
    fold(created)
    command = Envelope.wrap(MoveVmNuma(host="h1", vm="a", node=1), producer="cli")
    [started] = decide(holder.fleet, command, holder.machine.facts(holder.fleet))
    started_env = Envelope.wrap(started, producer="hosts", caused_by=command)
    fold(started, started_env)

    telemetry_step(holder, 1.0)
    [outcome] = numa_reports(holder, 1.0)

    assert outcome.cause is started_env
    assert outcome.key == "numa:h1:a:0"
    assert isinstance(outcome.events[0], VmNumaMoveProgress)
    assert outcome.cause.correlation_id == command.id
