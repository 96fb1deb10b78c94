"""Forks on the hosts' pure model: what a fork needs of its parent, and what a template
refuses, each a typed rejection that changes nothing."""

from __future__ import annotations

import pytest

from schemas import Command
from schemas.host import HostRegistered
from schemas.service import RejectionCode
from schemas.sharing import VmTemplated
from schemas.transfers import StartMigration
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOnVm,
    ResizeVm,
    StunVm,
    VmCreated,
    VmState,
)
from services.hosts.domain import Facts
from services.hosts.state import evolve
from tests.unit.test_hosts_lifecycle import apply, code, host_with_vm

FACTS = Facts(checksum=lambda _vm: "ab" * 16)


def fork(child: str = "c1", **changes: object) -> CreateVm:
    fields: dict[str, object] = {
        "vm": child,
        "cpu": 2,
        "mem_mib": 2048,
        "host": "h1",
        "memory_mode": MemoryMode.FULL,
        "fork_of": "a",
        **changes,
    }
    return CreateVm.model_validate(fields)


def test_the_first_fork_makes_the_template_and_later_ones_only_add_children() -> None:
    """The parent is quiesced into a template once, with its checksum; it is off."""
    fleet, events = apply(host_with_vm(MemoryMode.FULL), fork(), FACTS)
    templated, created = events
    assert isinstance(templated, VmTemplated)
    assert templated.checksum == "ab" * 16
    assert isinstance(created, VmCreated)
    assert created.fork_of == "a"
    assert fleet.vms["a"].templated
    assert fleet.vms["a"].state == VmState.OFF
    fleet, events = apply(fleet, fork("c2"), FACTS)
    assert [type(e) for e in events] == [VmCreated]
    assert fleet.children_of("a") == ["c1", "c2"]


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (fork(fork_of="ghost"), RejectionCode.UNKNOWN_VM),
        (fork(mem_mib=4096), RejectionCode.SIZE_MISMATCH),
        (fork(checkpoint="cp"), RejectionCode.INVALID_REQUEST),
    ],
)
def test_a_fork_the_parent_cannot_make_is_refused(cmd: CreateVm, expected: RejectionCode) -> None:
    """Nothing changes: no template, no child."""
    fleet = host_with_vm(MemoryMode.FULL)
    after, events = apply(fleet, cmd, FACTS)
    assert code(events) == expected
    assert not after.vms["a"].templated
    assert "c1" not in after.vms


def test_an_accounting_only_parent_a_stunned_one_and_one_with_swapped_pages_are_refused() -> None:
    """No bytes to map, a VM that cannot be quiesced, pages a swap block holds alone."""
    _, events = apply(host_with_vm(MemoryMode.ACCOUNTING), fork(), FACTS)
    assert code(events) == RejectionCode.ACCOUNTING_ONLY
    stunned, _ = apply(host_with_vm(MemoryMode.FULL), StunVm(vm="a", host="h1"), FACTS)
    _, events = apply(stunned, fork(), FACTS)
    assert code(events) == RejectionCode.WRONG_STATE
    swapped = Facts(checksum=FACTS.checksum, fork_problem=lambda _vm: "3 pages swapped out")
    _, events = apply(host_with_vm(MemoryMode.FULL), fork(), swapped)
    assert code(events) == RejectionCode.WRONG_STATE


@pytest.mark.parametrize(
    "cmd",
    [
        DestroyVm(vm="a", host="h1"),
        StartMigration(migration="m1", vm="a", host="h1", target="h2", rate_mbps=1000),
        PowerOnVm(vm="a", host="h1"),
        ResizeVm(vm="a", host="h1", mem_mib=1024),
    ],
)
def test_a_template_with_a_child_is_kept_as_it_is(cmd: Command) -> None:
    """Destroyed, migrated, powered on or resized: refused while a child maps it."""
    fleet, _ = apply(host_with_vm(MemoryMode.FULL), fork(), FACTS)
    fleet = evolve(fleet, HostRegistered(host="h2", cpu_cores=4, cpu_mhz=2000, mem_mib=8192))
    _, events = apply(fleet, cmd, FACTS)
    assert code(events) == RejectionCode.WRONG_STATE


def test_a_template_goes_once_its_children_have() -> None:
    """The child powered off and destroyed first, the template can be destroyed."""
    fleet, _ = apply(host_with_vm(MemoryMode.FULL), fork(power_on=False), FACTS)
    for vm in ("c1", "a"):
        fleet, events = apply(fleet, DestroyVm(vm=vm, host="h1"), FACTS)
        assert [e.type_name() for e in events] == ["VmDestroyed"], events
    assert fleet.vms == {}
