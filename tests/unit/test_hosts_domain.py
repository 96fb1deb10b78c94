"""The hosts' pure decisions and state: placement, power, and typed rejections."""

from __future__ import annotations

from functools import reduce

from schemas import Command, Envelope, Event
from schemas.host import HostRegistered
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import (
    CreateVm,
    PowerOffVm,
    PowerOnVm,
    VmCreated,
    VmPoweredOff,
    VmPoweredOn,
    VmState,
)
from services.hosts.domain import Facts, decide
from services.hosts.state import Fleet, evolve


def fleet_of(*events: Event) -> Fleet:
    return reduce(evolve, events, Fleet())


def two_hosts() -> Fleet:
    return fleet_of(
        HostRegistered(host="h1", cpu_cores=2, cpu_mhz=1000, mem_mib=4096),
        HostRegistered(host="h2", cpu_cores=2, cpu_mhz=1000, mem_mib=8192),
    )


def run(fleet: Fleet, cmd: Command, facts: Facts | None = None) -> list[Event]:
    return decide(fleet, Envelope.wrap(cmd, producer="test"), facts)


def rejection(events: list[Event]) -> RejectionCode:
    assert len(events) == 1
    assert isinstance(events[0], CommandRejected)
    return events[0].code


def test_places_vm_on_host_with_most_free_memory() -> None:
    """Without a host named, the VM goes where the most memory is free."""
    [event] = run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=1024))
    assert event == VmCreated(
        vm="a", host="h2", cpu=1, mem_mib=1024, priority="low", powered_on=True
    )


def test_places_vm_on_named_host() -> None:
    """A CreateVm that names a host is placed there if it fits."""
    [event] = run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=1024, host="h1"))
    assert isinstance(event, VmCreated)
    assert event.host == "h1"


def test_rejects_creation_when_no_host_fits() -> None:
    """A VM larger than any host's free memory is rejected as insufficient capacity."""
    assert rejection(run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=9000))) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )


def test_rejects_too_many_vcpus() -> None:
    """vCPUs beyond the overcommit ratio of any host's cores are rejected."""
    assert rejection(run(two_hosts(), CreateVm(vm="a", cpu=9, mem_mib=64))) == (
        RejectionCode.INSUFFICIENT_CAPACITY
    )


def test_rejects_duplicate_name_and_unknown_host() -> None:
    """A name already used, or a host that does not exist, is rejected and nothing changes."""
    fleet = evolve(two_hosts(), run(two_hosts(), CreateVm(vm="a", cpu=1, mem_mib=64))[0])
    assert (
        rejection(run(fleet, CreateVm(vm="a", cpu=1, mem_mib=64))) == RejectionCode.ALREADY_EXISTS
    )
    assert rejection(run(fleet, CreateVm(vm="b", cpu=1, mem_mib=64, host="h9"))) == (
        RejectionCode.UNKNOWN_HOST
    )
    assert evolve(fleet, run(fleet, CreateVm(vm="a", cpu=1, mem_mib=64))[0]) == fleet


def test_memory_fills_up_as_vms_are_placed() -> None:
    """Placed VMs reserve memory, so the next placement sees less room."""
    fleet = two_hosts()
    for name in ["a", "b", "c"]:
        fleet = evolve(fleet, run(fleet, CreateVm(vm=name, cpu=1, mem_mib=4096))[0])
    assert {vm.host for vm in fleet.vms.values()} == {"h1", "h2"}
    assert rejection(run(fleet, CreateVm(vm="d", cpu=1, mem_mib=64))) == (
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
    cmd = Envelope.wrap(CreateVm(vm="a", cpu=1, mem_mib=99999), producer="test")
    [event] = decide(two_hosts(), cmd)
    assert isinstance(event, CommandRejected)
    assert (event.command_id, event.command_type, event.about) == (cmd.id, "CreateVm", "vm/a")
