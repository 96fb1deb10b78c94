"""Recorded guests on the hosts: driven every tick by inputs their host draws from the OS,
and executed on them; a VM without guest memory cannot be one."""

from __future__ import annotations

from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, GuestInputs, MemoryMode
from services.hosts.memory.execution import state_of
from tests.unit.test_hosts_machine import Harness, small_host


def recorded(name: str, seed: int = 3, **changes: object) -> CreateVm:
    fields: dict[str, object] = {
        "vm": name,
        "cpu": 1,
        "mem_mib": 16,
        "host": "h1",
        "memory_mode": MemoryMode.FULL,
        "seed": seed,
        "inputs": GuestInputs(packets_per_s=4),
        **changes,
    }
    return CreateVm.model_validate(fields)


def test_a_recorded_guest_takes_its_inputs_every_tick_and_answers_each_packet() -> None:
    h = Harness(small_host())
    h.do(recorded("io"))
    for _ in range(20):
        h.tick()

    mem = h.machine.memory["h1"]
    state = state_of(lambda page: mem.copy_pages("io", [page])[0].tobytes(), seed=3)
    assert state.received == h.machine.recorded.inputs["io"] > 0
    assert state.sent == h.machine.recorded.outputs["io"] > 0


def test_two_recorded_guests_of_one_seed_part_ways_where_plain_ones_would_not() -> None:
    """Plain guests of one seed write the same pages with the same bytes; recorded ones
    get different inputs from outside and differ after the first tick."""
    h = Harness(small_host())
    h.do(recorded("a"))
    h.do(recorded("b"))
    h.do(CreateVm(vm="p", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL, seed=3))
    h.do(CreateVm(vm="q", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL, seed=3))
    mem = h.machine.memory["h1"]
    assert mem.checksum("a") == mem.checksum("b")
    for _ in range(3):
        h.tick()

    assert mem.checksum("a") != mem.checksum("b")
    assert mem.checksum("p") == mem.checksum("q")


def test_inputs_for_a_vm_without_guest_memory_are_refused() -> None:
    """By the host too (the scheduler refuses the PlaceVm first: tests/unit/scheduler)."""
    h = Harness(small_host())
    events = h.do(recorded("acct", memory_mode=MemoryMode.ACCOUNTING))
    assert isinstance(events[0], CommandRejected)
    assert events[0].code == RejectionCode.ACCOUNTING_ONLY
    assert "acct" not in h.fleet.vms
