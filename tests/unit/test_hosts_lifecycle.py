"""VM lifecycle and host failure on the hosts' pure model, with typed rejections."""

from __future__ import annotations

from functools import reduce

import pytest

from schemas import Command, Envelope, Event
from schemas.host import (
    CrashHost,
    HostCrashed,
    HostRecovered,
    HostRegistered,
    HostState,
    RecoverHost,
)
from schemas.memory import PagePair, SharePages, UnsharePages
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    ResumeVm,
    SuspendVm,
    VmDestroyed,
    VmResized,
    VmResumed,
    VmState,
    VmSuspended,
)
from services.hosts.domain import Facts, decide
from services.hosts.state import Fleet, evolve
from tests.reserving import reserved


def apply(fleet: Fleet, cmd: Command, facts: Facts | None = None) -> tuple[Fleet, list[Event]]:
    """``cmd`` decided and folded, after the reservation its scheduler would make."""
    fleet = reserved(fleet, cmd)
    events = decide(fleet, Envelope.wrap(cmd, producer="test"), facts)
    return reduce(evolve, events, fleet), events


def code(events: list[Event]) -> RejectionCode:
    [event] = events
    assert isinstance(event, CommandRejected)
    return event.code


def host_with_vm(mode: MemoryMode = MemoryMode.ACCOUNTING) -> Fleet:
    fleet = evolve(Fleet(), HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=8192))
    fleet, _ = apply(fleet, CreateVm(vm="a", cpu=2, mem_mib=2048, host="h1", memory_mode=mode))
    return fleet


def test_suspend_resume_power_off_destroy() -> None:
    """A VM is suspended, resumed, powered off and destroyed, each answered by its event."""
    fleet = host_with_vm()
    fleet, events = apply(fleet, SuspendVm(vm="a", host="h1"))
    assert events == [VmSuspended(vm="a", host="h1")]
    assert fleet.vms["a"].state == VmState.SUSPENDED
    fleet, events = apply(fleet, ResumeVm(vm="a", host="h1"))
    assert events == [VmResumed(vm="a", host="h1")]
    fleet, _ = apply(fleet, PowerOffVm(vm="a", host="h1"))
    fleet, events = apply(fleet, DestroyVm(vm="a", host="h1"))
    assert events == [VmDestroyed(vm="a", host="h1")]
    assert "a" not in fleet.vms
    assert fleet.mem_reserved("h1") == 0


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (ResumeVm(vm="a", host="h1"), RejectionCode.WRONG_STATE),
        (DestroyVm(vm="a", host="h1"), RejectionCode.WRONG_STATE),
        (PowerOnVm(vm="a", host="h1"), RejectionCode.WRONG_STATE),
        (SuspendVm(vm="zz", host="h1"), RejectionCode.UNKNOWN_VM),
        (ResizeVm(vm="a", host="h9", cpu=2), RejectionCode.UNKNOWN_HOST),
        (ResizeVm(vm="a", host="h1", mem_mib=9000), RejectionCode.INSUFFICIENT_CAPACITY),
        (ResizeVm(vm="a", host="h1", cpu=17), RejectionCode.INSUFFICIENT_CAPACITY),
        (
            SharePages(host="h1", pairs=[PagePair(vm_a="a", page_a=0, vm_b="a", page_b=1)]),
            RejectionCode.ACCOUNTING_ONLY,
        ),
    ],
)
def test_lifecycle_rejections_change_nothing(cmd: Command, expected: RejectionCode) -> None:
    """Wrong state, unknown VMs or hosts, no room, no bytes: a typed rejection, same fleet
    (the same as the scheduler's reservation left it, for a resize)."""
    fleet = host_with_vm()
    after, events = apply(fleet, cmd)
    assert code(events) == expected
    assert after == reserved(fleet, cmd)
    assert (after.hosts, after.vms, after.transfers) == (fleet.hosts, fleet.vms, fleet.transfers)


def test_resize_up_and_down() -> None:
    """A VM grows and shrinks in vCPUs and memory while above what its guest uses."""
    fleet = host_with_vm()
    facts = Facts(used_mib=lambda _vm: 512.0)
    fleet, events = apply(fleet, ResizeVm(vm="a", host="h1", cpu=4, mem_mib=4096), facts)
    assert events == [VmResized(vm="a", host="h1", cpu=4, mem_mib=4096)]
    fleet, events = apply(fleet, ResizeVm(vm="a", host="h1", mem_mib=1024), facts)
    assert events == [VmResized(vm="a", host="h1", cpu=4, mem_mib=1024, used_mib=512.0)]
    assert (fleet.vms["a"].cpu, fleet.vms["a"].mem_mib) == (4, 1024)


def test_resize_below_used_memory_is_rejected() -> None:
    """Shrinking memory below what the guest uses is refused, and the VM keeps its size."""
    fleet = host_with_vm()
    after, events = apply(
        fleet, ResizeVm(vm="a", host="h1", mem_mib=256), Facts(used_mib=lambda _vm: 700.0)
    )
    assert code(events) == RejectionCode.BELOW_USED_MEMORY
    assert after == fleet


def test_crash_powers_off_its_vms_and_refuses_commands_until_recovered() -> None:
    """A crashed host loses its running VMs, answers commands with host-down, and comes back."""
    fleet = host_with_vm()
    fleet, events = apply(fleet, CrashHost(host="h1"))
    assert events == [HostCrashed(host="h1", vms_lost=["a"])]
    assert fleet.hosts["h1"].state == HostState.DOWN
    assert fleet.vms["a"].state == VmState.OFF
    _, refused = apply(fleet, PowerOnVm(vm="a", host="h1"))
    assert code(refused) == RejectionCode.HOST_DOWN
    _, refused = apply(fleet, CreateVm(vm="b", cpu=1, mem_mib=64, host="h1"))
    assert code(refused) == RejectionCode.HOST_DOWN
    assert code(apply(fleet, CrashHost(host="h1"))[1]) == RejectionCode.WRONG_STATE
    fleet, events = apply(fleet, RecoverHost(host="h1"))
    assert events == [HostRecovered(host="h1")]
    fleet, _ = apply(fleet, PowerOnVm(vm="a", host="h1"))
    assert fleet.vms["a"].state == VmState.ON


def test_page_commands_ask_the_machine_and_pass_on_its_verdict() -> None:
    """Sharing and unsharing go ahead only when the machine finds no problem."""
    fleet = host_with_vm(MemoryMode.FULL)
    share = SharePages(host="h1", pairs=[PagePair(vm_a="a", page_a=0, vm_b="a", page_b=1)])
    differ = Facts(share_plan=lambda _c: (RejectionCode.BYTES_DIFFER, "different bytes"))
    assert code(apply(fleet, share, differ)[1]) == RejectionCode.BYTES_DIFFER
    _, events = apply(fleet, share)
    assert [e.type_name() for e in events] == ["PagesShared"]
    unshare = UnsharePages(host="h1", vm="a", pages=[9_999_999])
    far = Facts(unshare_plan=lambda _c: (RejectionCode.PAGE_OUT_OF_RANGE, "no such page"))
    assert code(apply(fleet, unshare, far)[1]) == RejectionCode.PAGE_OUT_OF_RANGE
