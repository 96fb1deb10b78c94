"""Live migrations and file copies on the hosts' pure model, and the guest memory they move."""

from __future__ import annotations

from datetime import timedelta
from functools import reduce

import pytest

from schemas import Command, Envelope, Event, Message
from schemas.host import CrashHost, HostRegistered, HostState, RecoverHost
from schemas.memory import (
    ExportPages,
    ImportPages,
    PagesExported,
    PagesImported,
    RunVm,
    Selection,
    VmRan,
)
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.queries import ListVms, VmList
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import (
    CopyAborted,
    CopyCompleted,
    CopyStarted,
    MigrationAborted,
    MigrationCompleted,
    MigrationStarted,
    StartCopy,
    StartMigration,
)
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOffVm,
    ResizeVm,
    StunVm,
    ThrottleVm,
    VmCreated,
    VmState,
)
from services.hosts.domain import decide
from services.hosts.handlers import FleetHolder, answer_query
from services.hosts.machine import WRITES_PER_TICK, Machine
from services.hosts.outcomes import outcome_key, outcomes
from services.hosts.state import EPOCH, Fleet, evolve
from services.hosts.transfers import export_pages, import_pages
from tests.reserving import reservation, reserved
from tests.unit.test_hosts_machine import Harness

HOSTS = ("h1", "h2", "h3")


def apply(fleet: Fleet, cmd: Command) -> tuple[Fleet, list[Event]]:
    """``cmd`` decided and folded, after the reservation its scheduler would make."""
    fleet = reserved(fleet, cmd)
    env = Envelope.wrap(cmd, producer="test")
    events = decide(fleet, env)
    return reduce(evolve, events, fleet), events


def code(events: list[Event]) -> RejectionCode:
    [event] = events
    assert isinstance(event, CommandRejected)
    return event.code


def host(name: str, mem_mib: int = 4096) -> HostRegistered:
    return HostRegistered(host=name, cpu_cores=4, cpu_mhz=2000, mem_mib=mem_mib)


def fleet_with_vm(target_mib: int = 4096) -> Fleet:
    """h1 runs VM a (1024 MiB); h2 has ``target_mib``; h3 is a third host."""
    fleet = reduce(evolve, [host("h1"), host("h2", target_mib), host("h3")], Fleet())
    fleet, _ = apply(fleet, CreateVm(vm="a", cpu=2, mem_mib=1024, host="h1"))
    return fleet


def migrate(
    migration: str = "m1", vm: str = "a", source: str = "h1", target: str = "h2"
) -> Command:
    return StartMigration(host=source, target=target, rate_mbps=1000, migration=migration, vm=vm)


def copy(copy_id: str = "c1", source: str = "h1", target: str = "h2") -> Command:
    return StartCopy(host=source, target=target, rate_mbps=800, copy_id=copy_id, size_mib=500)


def test_migration_starts_with_memory_over_rate_as_its_expected_time() -> None:
    """A StartMigration is answered with MigrationStarted; the VM's memory in megabits over
    the reserved rate is the emulated time it takes."""
    fleet, events = apply(fleet_with_vm(), migrate())
    assert events == [
        MigrationStarted(
            migration="m1",
            vm="a",
            source="h1",
            target="h2",
            expected_seconds=1024 * 8 / 1000,
            rate_mbps=1000,
            mem_mib=1024,
        )
    ]
    [transfer] = fleet.transfers.values()
    assert (transfer.source, transfer.target, transfer.vm) == ("h1", "h2", "a")
    assert fleet.vms["a"].host == "h1"


def test_copy_starts_with_size_over_rate_as_its_expected_time() -> None:
    """A StartCopy is answered with CopyStarted, expected to take size * 8 / rate seconds."""
    fleet, events = apply(fleet_with_vm(), copy())
    assert events == [
        CopyStarted(copy_id="c1", source="h1", target="h2", size_mib=500, expected_seconds=5.0)
    ]
    assert [t.vm for t in fleet.transfers.values()] == [None]


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (migrate(source="h9"), RejectionCode.UNKNOWN_HOST),
        (migrate(target="h9"), RejectionCode.UNKNOWN_HOST),
        (migrate(vm="zz"), RejectionCode.UNKNOWN_VM),
        (migrate(vm="a", source="h3"), RejectionCode.UNKNOWN_VM),
        (migrate(target="h1"), RejectionCode.WRONG_STATE),
        (copy(source="h9"), RejectionCode.UNKNOWN_HOST),
        (copy(target="h9"), RejectionCode.UNKNOWN_HOST),
        (copy(target="h1"), RejectionCode.WRONG_STATE),
    ],
    ids=[
        "unknown-source",
        "unknown-target",
        "unknown-vm",
        "vm-elsewhere",
        "to-itself",
        "copy-unknown-source",
        "copy-unknown-target",
        "copy-to-itself",
    ],
)
def test_rejects_a_transfer_that_names_the_wrong_hosts_or_vm(
    cmd: Command, expected: RejectionCode
) -> None:
    """A transfer between hosts that do not exist, to its own source, or of a VM that is not
    on its source is rejected with its code, and nothing starts."""
    fleet, events = apply(fleet_with_vm(), cmd)
    assert code(events) == expected
    assert not fleet.transfers


@pytest.mark.parametrize("down", ["h1", "h2"])
@pytest.mark.parametrize("cmd", [migrate(), copy()], ids=["migration", "copy"])
def test_rejects_a_transfer_with_an_end_down(down: str, cmd: Command) -> None:
    """Neither a migration nor a copy starts while its source or target is down."""
    fleet, _ = apply(fleet_with_vm(), CrashHost(host=down))
    assert code(apply(fleet, cmd)[1]) == RejectionCode.HOST_DOWN


def test_rejects_a_second_migration_of_a_migrating_vm() -> None:
    """A VM migrates to one target at a time."""
    fleet, _ = apply(fleet_with_vm(), migrate("m1"))
    assert code(apply(fleet, migrate("m2", target="h3"))[1]) == RejectionCode.WRONG_STATE


@pytest.mark.parametrize("cmd", [migrate(), copy()], ids=["migration", "copy"])
def test_rejects_an_id_used_before_even_once_it_ended(cmd: Command) -> None:
    """A transfer id names one transfer forever: its outcome's id derives from it."""
    fleet, _ = apply(fleet_with_vm(), cmd)
    assert code(apply(fleet, cmd)[1]) == RejectionCode.ALREADY_EXISTS
    outcome: Event = MigrationCompleted(migration="m1", vm="a", source="h1", target="h2")
    if isinstance(cmd, StartCopy):
        [(_, outcome)] = outcomes(fleet, HOSTS, EPOCH + timedelta(hours=1), 1.0)
    fleet = evolve(fleet, outcome)
    assert not fleet.transfers
    back = migrate(target="h1", source="h2") if isinstance(cmd, StartMigration) else cmd
    assert code(apply(fleet, back)[1]) == RejectionCode.ALREADY_EXISTS


def test_migration_and_copy_ids_are_separate() -> None:
    """A copy may share its id with a migration: different parties name them."""
    fleet, _ = apply(fleet_with_vm(), migrate("x"))
    _, events = apply(fleet, copy("x"))
    assert isinstance(events[0], CopyStarted)


def test_rejects_a_migration_the_target_has_no_room_for() -> None:
    """A target without the VM's memory free is refused as insufficient capacity."""
    _, events = apply(fleet_with_vm(target_mib=512), migrate())
    assert code(events) == RejectionCode.INSUFFICIENT_CAPACITY


@pytest.mark.parametrize(
    "held",
    [
        [],
        [reservation("a", "h3", 2, 1024, name="m1-in", purpose="migration")],
        [reservation("b", "h2", 2, 1024, name="m1-in", purpose="migration")],
        [reservation("a", "h2", 1, 1024, name="m1-in", purpose="migration")],
        [reservation("a", "h2", 2, 512, name="m1-in", purpose="migration")],
        [
            reservation("a", "h2", 2, 1024, name="m1-in", purpose="migration"),
            CapacityReleased(host="h2", reservation="m1-in"),
        ],
    ],
    ids=["none", "another-host", "another-vm", "too-few-vcpus", "too-little-memory", "released"],
)
def test_rejects_a_migration_no_reservation_on_the_target_covers(
    held: list[CapacityReserved | CapacityReleased],
) -> None:
    """A VM migrates only into room reserved for it, at its size, on the target (its own
    reservation on the source does not count): otherwise the migration is refused
    no-reservation and nothing starts."""
    fleet = reduce(evolve, held, fleet_with_vm())
    events = decide(fleet, Envelope.wrap(migrate(), producer="test"))
    assert code(events) == RejectionCode.NO_RESERVATION
    assert reduce(evolve, events, fleet) == fleet


def test_a_migration_within_its_reservation_on_the_target_starts() -> None:
    """The reservation a scheduler makes on the target for the VM's size covers it."""
    fleet = evolve(
        fleet_with_vm(), reservation("a", "h2", 2, 1024, name="m1-in", purpose="migration")
    )
    [event] = decide(fleet, Envelope.wrap(migrate(), producer="test"))
    assert isinstance(event, MigrationStarted)
    assert (event.vm, event.target) == ("a", "h2")


def test_an_incoming_migration_takes_its_room_on_the_target_at_once() -> None:
    """While a VM migrates in, its memory on the target is taken: another VM that would
    need the same room is refused, whether created or migrated there."""
    fleet = fleet_with_vm(target_mib=1536)
    fleet, _ = apply(fleet, CreateVm(vm="b", cpu=1, mem_mib=1024, host="h3"))
    fleet, _ = apply(fleet, migrate("m1"))
    assert code(apply(fleet, CreateVm(vm="c", cpu=1, mem_mib=1024, host="h2"))[1]) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )
    assert code(apply(fleet, migrate("m2", vm="b", source="h3"))[1]) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )


@pytest.mark.parametrize(
    "cmd", [DestroyVm(vm="a", host="h1"), ResizeVm(vm="a", host="h1", mem_mib=512)]
)
def test_a_migrating_vm_is_neither_destroyed_nor_resized(cmd: Command) -> None:
    """The room taken on the target is for the VM as it is, until it lands."""
    fleet, _ = apply(fleet_with_vm(), PowerOffVm(vm="a", host="h1"))
    fleet, _ = apply(fleet, migrate())
    assert code(apply(fleet, cmd)[1]) == RejectionCode.WRONG_STATE


def started(fleet: Fleet, cmd: Command) -> tuple[Fleet, Envelope[Message]]:
    """Start a transfer and fold its event with an envelope, as the service does (after
    the reservation its scheduler would make)."""
    fleet = reserved(fleet, cmd)
    [event] = decide(fleet, Envelope.wrap(cmd, producer="test"))
    env = Envelope.wrap(event, producer="hosts", sim_time=42.0)
    return evolve(fleet, event, env), env


def test_copies_complete_once_their_emulated_time_has_passed() -> None:
    """The clock starts at the Started event's wall time: at speed 10 a copy of 5 emulated
    seconds completes after 0.5 wall seconds, not before. A migration is not timed here:
    the migration coordinator moves it in rounds and ends it."""
    fleet, env = started(fleet_with_vm(), copy())
    fleet, _ = started(fleet, migrate())
    transfer = fleet.transfers["copy/c1"]
    assert (transfer.started_at, transfer.started_sim, transfer.cause) == (
        env.occurred_at,
        42.0,
        env,
    )
    assert outcomes(fleet, HOSTS, env.occurred_at + timedelta(seconds=0.4), 10.0) == []
    later = env.occurred_at + timedelta(hours=1)
    assert [event for _, event in outcomes(fleet, HOSTS, later, 10.0)] == [
        CopyCompleted(copy_id="c1", source="h1", target="h2"),
    ]


def test_only_the_sources_process_ends_a_copy() -> None:
    """A process whose hosts do not include the source leaves the copy to its owner."""
    fleet, _ = apply(fleet_with_vm(), copy())
    assert outcomes(fleet, ["h2", "h3"], EPOCH + timedelta(hours=1), 1.0) == []


def test_completion_moves_the_vm_and_ends_the_migration() -> None:
    """MigrationCompleted puts the VM on the target, running as before its stun and
    unthrottled, and frees its source."""
    fleet, _ = apply(fleet_with_vm(), migrate())
    fleet, _ = apply(fleet, ThrottleVm(vm="a", host="h1", cpu_cap=0.5))
    fleet, _ = apply(fleet, StunVm(vm="a", host="h1"))
    fleet = evolve(fleet, MigrationCompleted(migration="m1", vm="a", source="h1", target="h2"))
    assert not fleet.transfers
    a = fleet.vms["a"]
    assert (a.host, a.state, a.stunned, a.cpu_cap) == ("h2", VmState.ON, False, 1.0)
    assert (fleet.mem_reserved("h1"), fleet.mem_reserved("h2")) == (0, 1024)


def test_an_aborted_migration_leaves_the_vm_running_at_its_source() -> None:
    """Stunned for a switchover or throttled to converge, the VM runs on as before."""
    fleet, _ = apply(fleet_with_vm(), migrate())
    fleet, _ = apply(fleet, ThrottleVm(vm="a", host="h1", cpu_cap=0.3))
    fleet, _ = apply(fleet, StunVm(vm="a", host="h1"))
    aborted = MigrationAborted(migration="m1", vm="a", source="h1", target="h2", reason="x")
    fleet = evolve(fleet, aborted)
    a = fleet.vms["a"]
    assert not fleet.transfers
    assert (a.host, a.state, a.stunned, a.cpu_cap) == ("h1", VmState.ON, False, 1.0)


@pytest.mark.parametrize("crashed", ["h1", "h2"])
def test_a_crash_of_either_end_aborts_a_copy_in_flight(crashed: str) -> None:
    """When the source or the target crashes, its copies end aborted, naming the host; a
    recovery meanwhile does not save them. (Its migrations are the coordinator's to end.)"""
    fleet, _ = apply(fleet_with_vm(), migrate())
    fleet, _ = apply(fleet, copy())
    fleet, _ = apply(fleet, CrashHost(host=crashed))
    fleet, _ = apply(fleet, RecoverHost(host=crashed))
    ended = [event for _, event in outcomes(fleet, HOSTS, EPOCH, 1.0)]
    reason = f"host {crashed} crashed"
    assert ended == [CopyAborted(copy_id="c1", source="h1", target="h2", reason=reason)]
    fleet = reduce(evolve, ended, fleet)
    assert list(fleet.transfers) == ["migration/m1"]


def test_a_vm_that_lands_on_a_crashed_target_is_lost_with_it() -> None:
    """A completion decided before the target's crash reached the source (another process)
    lands the VM powered off on the dead host."""
    fleet, _ = apply(fleet_with_vm(), migrate())
    fleet, _ = apply(fleet, CrashHost(host="h2"))
    fleet = evolve(fleet, MigrationCompleted(migration="m1", vm="a", source="h1", target="h2"))
    assert fleet.hosts["h2"].state == HostState.DOWN
    assert (fleet.vms["a"].host, fleet.vms["a"].state) == ("h2", VmState.OFF)


def test_outcome_keys_are_fixed_per_transfer_and_outcome() -> None:
    """Deciding an outcome again (after a restart) gives the same key, so the same ids;
    each outcome of each transfer has its own."""
    fleet, _ = apply(fleet_with_vm(), copy())
    [(transfer, done)] = outcomes(fleet, HOSTS, EPOCH + timedelta(hours=1), 1.0)
    [(again, done_again)] = outcomes(fleet, HOSTS, EPOCH + timedelta(hours=2), 1.0)
    assert outcome_key(transfer, done) == outcome_key(again, done_again)
    crashed, _ = apply(fleet, CrashHost(host="h2"))
    [(_, aborted)] = outcomes(crashed, HOSTS, EPOCH, 1.0)
    assert outcome_key(transfer, aborted) != outcome_key(transfer, done)


def full_hosts() -> Harness:
    h = Harness(*(HostRegistered(host=n, cpu_cores=4, cpu_mhz=2000, mem_mib=1024) for n in HOSTS))
    h.do(CreateVm(vm="a", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL, seed=3))
    h.do(CreateVm(vm="b", cpu=1, mem_mib=16, host="h1", seed=4))
    return h


def moved(h: Harness, migration: str, vm: str, target: str = "h2") -> None:
    """Start the migration, send every page from the source to the target's shell, and
    fold its completion: a coordinator's rounds, in one."""
    [event] = h.do(migrate(migration, vm=vm, target=target))
    assert isinstance(event, MigrationStarted)
    if h.fleet.vms[vm].memory_mode == MemoryMode.FULL:
        carry(h.machine, h.machine, vm, "h1", target)
    h.fold(MigrationCompleted(migration=migration, vm=vm, source="h1", target=target))


def carry(src: Machine, dst: Machine, vm: str, source: str, target: str) -> None:
    export = ExportPages(host=source, vm=vm, flow="f1", selection=Selection.CHECKPOINT)
    out = export_pages(src, Envelope.wrap(export, producer="test"))
    [exported] = out.events
    assert isinstance(exported, PagesExported)
    imported = ImportPages(host=target, vm=vm, flow="f1", batches=exported.batches)
    [answer] = import_pages(dst, Envelope.wrap(imported, producer="test"), list(out.data["f1"]))
    assert isinstance(answer, PagesImported), answer


async def test_a_full_memory_vm_arrives_byte_for_byte() -> None:
    """A full-memory VM's bytes, as its guest wrote them, reach the target's shell
    unchanged, and the shell is the VM there; the source's frames are freed; telemetry and
    queries report the VM on the target."""
    h = full_hosts()
    for _ in range(3):
        h.tick()  # the guest writes pages: its bytes are no longer what its seed gives
    src, dst = h.machine.memory["h1"], h.machine.memory["h2"]
    checksum, digests = src.checksum("a"), src.page_digests("a")
    moved(h, "m1", "a")
    assert "a" not in src.vms
    assert dst.checksum("a") == checksum
    assert (dst.page_digests("a") == digests).all()
    samples = h.tick()
    assert [s.vm for s in samples["h2"].vms] == ["a"]
    assert [s.vm for s in samples["h1"].vms] == ["b"]
    holder = FleetHolder(list(HOSTS))
    holder.fleet, holder.machine = h.fleet, h.machine
    reply = await answer_query(holder, Envelope.wrap(ListVms(), producer="test"))
    assert isinstance(reply, VmList)
    assert {v.vm: v.host for v in reply.vms} == {"a": "h2", "b": "h1"}


def test_the_target_holds_an_empty_shell_until_the_end_and_lets_it_go_on_abort() -> None:
    """From the start the target holds the VM's frames (zeros, in whole large pages); an
    abort frees them and leaves the source's guest as it was."""
    h = full_hosts()
    h.tick()
    src, dst = h.machine.memory["h1"], h.machine.memory["h2"]
    before = src.checksum("a")
    h.do(migrate("m1", vm="a"))
    assert dst.used_pages("a") == 0
    assert dst.vm_usage("a").pages == src.vm_usage("a").pages
    h.fold(MigrationAborted(migration="m1", vm="a", source="h1", target="h2", reason="x"))
    assert "a" not in dst.vms
    assert src.checksum("a") == before


def test_a_migrating_guest_works_only_in_its_runs() -> None:
    """The ticks leave a migrating guest alone; a RunVm of two ticks' time writes what two
    ticks would, and the dirty pages it reports are those the guest then has."""
    h = full_hosts()
    h.do(migrate("m1", vm="a"))
    src = h.machine.memory["h1"]
    src.collect_dirty("a")
    before = src.checksum("a")
    h.tick()
    assert src.checksum("a") == before
    [ran] = h.do(RunVm(host="h1", vm="a", seconds=2.0, tag="r1"))
    assert isinstance(ran, VmRan)
    assert (ran.steps, ran.writes_per_step) == (2, WRITES_PER_TICK)
    assert src.checksum("a") != before
    assert ran.dirty_pages == len(src.collect_dirty("a", clear=False))


def test_an_accounting_vm_just_moves() -> None:
    """An accounting-only VM's reservation leaves the source and is taken on the target."""
    h = full_hosts()
    src, dst = h.machine.memory["h1"], h.machine.memory["h2"]
    spec, frames = src.spec("b"), src.used_frames()
    moved(h, "m1", "b")
    assert ("b" in src.vms, dst.spec("b")) == (False, spec)
    assert src.used_frames() < frames


def machine_after(here: list[str], events: list[Event], *, live: bool = True) -> Machine:
    machine, fleet = Machine(here), Fleet()
    machine.live = live
    for event in events:
        machine.apply(fleet, event)
        fleet = evolve(fleet, event)
    return machine


PLACED: list[Event] = [
    host("h1"),
    host("h2"),
    VmCreated(
        vm="a",
        host="h1",
        cpu=1,
        mem_mib=16,
        priority="low",
        powered_on=True,
        memory_mode=MemoryMode.FULL,
        seed=3,
    ),
]
STARTED = MigrationStarted(migration="m1", vm="a", source="h1", target="h2", expected_seconds=1)
COMPLETED = MigrationCompleted(migration="m1", vm="a", source="h1", target="h2")


def test_with_its_target_elsewhere_the_source_lets_the_guest_go() -> None:
    [mem] = machine_after(["h1"], [*PLACED, STARTED, COMPLETED]).memory.values()
    assert mem.vms == ()


def test_a_target_in_another_process_keeps_what_arrived_or_rebuilds_from_the_seed() -> None:
    """Live, the target's guest is the shell the source's pages filled; rebuilding from
    the log (the pages are not in it), it is made from its seed, as after a reboot."""
    source = machine_after(["h1"], [*PLACED, STARTED])
    source.memory["h1"].write("a", 5, b"written before the move")
    sent = source.memory["h1"].checksum("a")
    target = machine_after(["h2"], [*PLACED, STARTED])
    carry(source, target, "a", "h1", "h2")
    fleet = reduce(evolve, [*PLACED, STARTED], Fleet())
    target.apply(fleet, COMPLETED)
    assert target.memory["h2"].checksum("a") == sent
    fresh = machine_after(["h1"], PLACED).memory["h1"].checksum("a")
    rebuilt = machine_after(["h2"], [*PLACED, STARTED, COMPLETED], live=False)
    assert rebuilt.memory["h2"].checksum("a") == fresh
