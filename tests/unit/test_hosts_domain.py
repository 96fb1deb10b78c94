"""The hosts' pure decisions and state: placement within reservations, power, and typed
rejections."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import reduce

import pytest

from schemas import Command, Envelope, Event
from schemas.ha import RestartVm, VmRestarted
from schemas.host import HostCrashed, HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import MigrationCompleted
from schemas.vm import (
    CreateVm,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    VmCreated,
    VmDestroyed,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmState,
)
from services.hosts.domain import Facts, decide
from services.hosts.state import Fleet, evolve
from tests.reserving import reservation, reserved


def fleet_of(*events: Event) -> Fleet:
    return reduce(evolve, events, Fleet())


def two_hosts_events() -> list[Event]:
    return [
        HostRegistered(host="h1", cpu_cores=2, cpu_mhz=1000, mem_mib=4096),
        HostRegistered(host="h2", cpu_cores=2, cpu_mhz=1000, mem_mib=8192),
    ]


def two_hosts() -> Fleet:
    return fleet_of(*two_hosts_events())


def run(fleet: Fleet, cmd: Command, facts: Facts | None = None) -> list[Event]:
    """``cmd`` decided after the reservation its scheduler would make for it."""
    return bare(reserved(fleet, cmd), cmd, facts)


def bare(fleet: Fleet, cmd: Command, facts: Facts | None = None) -> list[Event]:
    """``cmd`` decided on ``fleet`` as it is: no reservation is made for it."""
    return decide(fleet, Envelope.wrap(cmd, producer="test"), facts)


def apply(fleet: Fleet, cmd: Command) -> Fleet:
    """``fleet`` after the reservation for ``cmd`` and the answer to it."""
    fleet = reserved(fleet, cmd)
    return reduce(evolve, bare(fleet, cmd), fleet)


def rejection(events: list[Event]) -> RejectionCode:
    assert len(events) == 1
    assert isinstance(events[0], CommandRejected)
    return events[0].code


def test_a_create_that_names_no_host_is_refused() -> None:
    """The hosts choose no host: a CreateVm without one is refused no-reservation, even
    with room reserved for the VM on every host, and nothing changes."""
    fleet = fleet_of(
        *two_hosts_events(),
        reservation("a", "h1", 1, 1024),
        reservation("a", "h2", 1, 1024),
    )
    events = bare(fleet, CreateVm(vm="a", cpu=1, mem_mib=1024))
    assert rejection(events) == RejectionCode.NO_RESERVATION
    assert reduce(evolve, events, fleet) == fleet


def test_places_vm_on_named_host() -> None:
    """A CreateVm that names a host is placed there if it fits."""
    [event] = run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=1024, host="h1"))
    assert isinstance(event, VmCreated)
    assert event.host == "h1"


@pytest.mark.parametrize(
    "held",
    [
        [],
        [reservation("b", "h1", 2, 1024)],
        [reservation("a", "h2", 2, 1024)],
        [reservation("a", "h1", 1, 1024)],
        [reservation("a", "h1", 2, 1023)],
        [reservation("a", "h1", 2, 1024), CapacityReleased(host="h1", reservation="a")],
    ],
    ids=["none", "another-vm", "another-host", "too-few-vcpus", "too-little-memory", "released"],
)
def test_a_create_no_reservation_covers_is_refused(
    held: list[CapacityReserved | CapacityReleased],
) -> None:
    """No reservation, one for another VM or on another host, one too small, or one
    released since: the create is refused no-reservation and nothing changes."""
    fleet = fleet_of(*two_hosts_events(), *held)
    events = bare(fleet, CreateVm(vm="a", cpu=2, mem_mib=1024, host="h1"))
    assert rejection(events) == RejectionCode.NO_RESERVATION
    assert reduce(evolve, events, fleet) == fleet


def test_a_create_within_its_reservation_goes_ahead() -> None:
    """A reservation on the host for the VM, at least its size, covers it."""
    fleet = fleet_of(*two_hosts_events(), reservation("a", "h1", 2, 1024))
    [event] = bare(fleet, CreateVm(vm="a", cpu=2, mem_mib=1024, host="h1"))
    assert isinstance(event, VmCreated)
    assert (event.host, event.cpu, event.mem_mib) == ("h1", 2, 1024)


def test_a_released_reservation_no_longer_covers() -> None:
    """Once released, a reservation is gone from the host's view of the ledger."""
    fleet = fleet_of(*two_hosts_events(), reservation("a", "h1", 1, 1024))
    cmd = CreateVm(vm="a", cpu=1, mem_mib=1024, host="h1")
    assert isinstance(bare(fleet, cmd)[0], VmCreated)
    fleet = evolve(fleet, CapacityReleased(host="h1", reservation="a"))
    assert not fleet.reserved["h1"]
    assert rejection(bare(fleet, cmd)) == RejectionCode.NO_RESERVATION


def test_a_reservation_that_replaces_another_drops_it() -> None:
    """A reservation made in place of another (a migrated VM's own in place of its
    migration's) leaves only itself: the larger one it replaced covers nothing more."""
    fleet = fleet_of(
        *two_hosts_events(),
        reservation("a", "h2", 4, 4096, name="m1-in", purpose="migration"),
    )
    assert isinstance(bare(fleet, CreateVm(vm="a", cpu=2, mem_mib=2048, host="h2"))[0], VmCreated)
    own = reservation("a", "h2", 1, 1024).model_copy(update={"replaces": "m1-in"})
    fleet = evolve(fleet, own)
    assert set(fleet.reserved["h2"]) == {"a"}
    assert rejection(bare(fleet, CreateVm(vm="a", cpu=2, mem_mib=2048, host="h2"))) == (
        RejectionCode.NO_RESERVATION
    )
    assert isinstance(bare(fleet, CreateVm(vm="a", cpu=1, mem_mib=1024, host="h2"))[0], VmCreated)


def test_a_resize_grows_only_into_its_reservation() -> None:
    """Growing past the VM's reservation, in vCPUs or memory, is refused no-reservation and
    the VM keeps its size; a shrink needs no more room and goes ahead; a grow goes ahead
    once its reservation is grown."""
    fleet = apply(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=1024, host="h1"))
    for grow in (
        ResizeVm(vm="a", host="h1", cpu=2),
        ResizeVm(vm="a", host="h1", mem_mib=2048),
    ):
        events = bare(fleet, grow)
        assert rejection(events) == RejectionCode.NO_RESERVATION
        assert reduce(evolve, events, fleet) == fleet
    assert bare(fleet, ResizeVm(vm="a", host="h1", mem_mib=512)) == [
        VmResized(vm="a", host="h1", cpu=1, mem_mib=512, used_mib=0.0)
    ]
    fleet = apply(fleet, ResizeVm(vm="a", host="h1", cpu=2, mem_mib=2048))
    assert (fleet.vms["a"].cpu, fleet.vms["a"].mem_mib) == (2, 2048)


def test_a_restart_no_reservation_covers_is_refused() -> None:
    """A failed host's VM is restarted elsewhere only in room reserved for it there: its
    reservation on the failed host does not count; nothing changes until one is made."""
    fleet = apply(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=1024, host="h1"))
    fleet = evolve(fleet, HostCrashed(host="h1", vms_lost=["a"]))
    restart = RestartVm(
        host="h2", vm="a", from_host="h1", cpu=1, mem_mib=1024, failed_at=datetime.now(UTC)
    )
    events = bare(fleet, restart)
    assert rejection(events) == RejectionCode.NO_RESERVATION
    assert reduce(evolve, events, fleet) == fleet
    [restarted] = run(fleet, restart)
    assert isinstance(restarted, VmRestarted)
    assert (restarted.vm, restarted.host) == ("a", "h2")


@pytest.mark.parametrize("host", ["h1", "h2"])
def test_rejects_creation_when_the_host_has_no_room(host: str) -> None:
    """A VM larger than its host's free memory is rejected as insufficient capacity, even
    with room reserved for it in the ledger."""
    assert rejection(run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=9000, host=host))) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )


@pytest.mark.parametrize("host", ["h1", "h2"])
def test_rejects_too_many_vcpus(host: str) -> None:
    """vCPUs beyond the overcommit ratio of the host's cores are rejected."""
    assert rejection(run(two_hosts(), CreateVm(vm="a", cpu=9, mem_mib=64, host=host))) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )


def test_rejects_duplicate_name_and_unknown_host() -> None:
    """A name already used, or a host that does not exist, is rejected and nothing changes."""
    fleet = apply(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=64, host="h1"))
    assert rejection(run(fleet, CreateVm(vm="a", cpu=1, mem_mib=64, host="h2"))) == (
        RejectionCode.ALREADY_EXISTS
    )
    assert rejection(run(fleet, CreateVm(vm="b", cpu=1, mem_mib=64, host="h9"))) == (
        RejectionCode.UNKNOWN_HOST
    )
    assert evolve(fleet, run(fleet, CreateVm(vm="a", cpu=1, mem_mib=64, host="h2"))[0]) == fleet


def test_memory_fills_up_as_vms_are_placed() -> None:
    """Placed VMs take memory, so the next placement sees less room."""
    fleet = two_hosts()
    for name, host in [("a", "h2"), ("b", "h1"), ("c", "h2")]:
        fleet = apply(fleet, CreateVm(vm=name, cpu=1, mem_mib=4096, host=host))
    assert {vm.name: vm.host for vm in fleet.vms.values()} == {"a": "h2", "b": "h1", "c": "h2"}
    for host in ("h1", "h2"):
        assert rejection(run(fleet, CreateVm(vm="d", cpu=1, mem_mib=64, host=host))) == (
            RejectionCode.INSUFFICIENT_CAPACITY
        )


def test_power_off_then_on() -> None:
    """A running VM powers off, then on again; each answer is the matching event."""
    fleet = evolve(two_hosts(), run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=64, host="h1"))[0])
    off = run(fleet, PowerOffVm(vm="a", host="h1"))
    assert off == [VmPoweredOff(vm="a", host="h1")]
    fleet = evolve(fleet, off[0])
    assert fleet.vms["a"].state == VmState.OFF
    on = run(fleet, PowerOnVm(vm="a", host="h1"))
    assert on == [VmPoweredOn(vm="a", host="h1")]
    assert evolve(fleet, on[0]).vms["a"].state == VmState.ON


def test_power_rejections() -> None:
    """Powering an unknown VM, a VM on another host, or one already in that state is rejected."""
    fleet = evolve(two_hosts(), run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=64, host="h1"))[0])
    assert rejection(run(fleet, PowerOnVm(vm="zz", host="h1"))) == RejectionCode.UNKNOWN_VM
    assert rejection(run(fleet, PowerOnVm(vm="a", host="h2"))) == RejectionCode.UNKNOWN_VM
    assert rejection(run(fleet, PowerOnVm(vm="a", host="h1"))) == RejectionCode.WRONG_STATE


def test_rejection_links_to_the_command() -> None:
    """A rejection names the command it refuses and the aggregate it is about."""
    cmd = Envelope.wrap(CreateVm(vm="a", cpu=1, mem_mib=99999, host="h1"), producer="test")
    [event] = decide(reserved(two_hosts(), cmd.data), cmd)
    assert isinstance(event, CommandRejected)
    assert (event.command_id, event.command_type, event.about) == (cmd.id, "CreateVm", "vm/a")


def test_the_vms_of_a_host_follow_creates_moves_restarts_and_destroys() -> None:
    """The per-host index the room checks read agrees, after every event, with a scan of
    every VM."""
    created = [made_on(f"v{i}", f"h{1 + i % 2}") for i in range(4)]
    events: list[Event] = [
        *two_hosts_events(),
        *created,
        MigrationCompleted(migration="m1", vm="v0", source="h1", target="h2"),
        VmRestarted(vm="v1", host="h1", from_host="h2", cpu=1, mem_mib=256, since_failure_s=1),
        VmDestroyed(vm="v2", host="h1"),
        VmDestroyed(vm="never-was", host="h1"),
    ]
    fleet = Fleet()
    for event in events:
        fleet = evolve(fleet, event)
        for host in ("h1", "h2"):
            scanned = sorted(vm.name for vm in fleet.vms.values() if vm.host == host)
            assert [vm.name for vm in fleet.vms_on(host)] == scanned
    assert [vm.name for vm in fleet.vms_on("h1")] == ["v1"]
    assert [vm.name for vm in fleet.vms_on("h2")] == ["v0", "v3"]


def made_on(vm: str, host: str) -> VmCreated:
    return VmCreated(vm=vm, host=host, cpu=1, mem_mib=256, priority="low", powered_on=True)
