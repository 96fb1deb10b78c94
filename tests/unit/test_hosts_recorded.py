"""Recorded guests on the hosts: driven every tick by inputs their host draws from the OS,
and executed on them; a VM without guest memory cannot be one."""

from __future__ import annotations

from schemas import Envelope, Event
from schemas.envelope import MAX_ENVELOPE_BYTES
from schemas.ft import FtMode, ProtectionRequested
from schemas.memory import MAX_RUN_INPUT_BYTES, MAX_RUN_INPUTS, LoggedRun, RunVm, VmRan
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


def protected_pair() -> Harness:
    """A recorded primary on h1 driven by its FT service, and its backup on h2 holding
    a copy of its memory (what the service's state copy makes of it)."""
    h = Harness(small_host("h1"), small_host("h2"))
    h.do(recorded("web"))
    for _ in range(3):
        h.tick()
    h.fold(
        ProtectionRequested(
            vm="web",
            mode=FtMode.RECORD_REPLAY,
            primary_host="h1",
            backup="web-ft1",
            epoch_ms=25,
        )
    )
    h.do(recorded("web-ft1", host="h2", backup_of="web", power_on=False))
    primary, backup = h.machine.memory["h1"], h.machine.memory["h2"]
    for batch in primary.export_pages("web"):
        backup.import_pages("web-ft1", batch)
    assert backup.checksum("web-ft1") == primary.checksum("web")
    return h


def ran(events: list[Event]) -> VmRan:
    [event] = events
    assert isinstance(event, VmRan), event
    return event


def test_a_backup_replaying_its_primarys_logged_runs_stays_equal_and_says_the_same() -> None:
    h = protected_pair()
    primary, backup = h.machine.memory["h1"], h.machine.memory["h2"]
    sent = []
    for n in range(5):
        run = ran(h.do(RunVm(host="h1", vm="web", seconds=2, tag=f"r{n}", record=True)))
        assert run.steps == 2
        entry = LoggedRun(
            first_step=run.first_step,
            steps=run.steps,
            writes_per_step=run.writes_per_step,
            reads_per_step=run.reads_per_step,
            inputs=run.inputs,
        )
        replayed = ran(
            h.do(
                RunVm(
                    host="h2",
                    vm="web-ft1",
                    seconds=0,
                    tag=f"r{n}",
                    logged=entry,
                    checksum_at_start=True,
                )
            )
        )
        assert replayed.outputs == run.outputs
        sent += [o.seq for o in run.outputs]
        assert replayed.inputs == run.inputs
        # The host's ticks leave both alone: only these runs change them.
        h.tick()
        assert backup.checksum("web-ft1") == primary.checksum("web")
    # Numbered by the guest, on from what it sent in its ticks, without a gap.
    assert len(sent) > 0
    assert sent == list(range(sent[0], sent[0] + len(sent)))


def test_a_recorded_run_reports_the_checksum_it_starts_from_and_what_it_was_given() -> None:
    h = protected_pair()
    primary = h.machine.memory["h1"]
    before = primary.checksum("web")
    run = ran(
        h.do(RunVm(host="h1", vm="web", seconds=3, tag="r", record=True, checksum_at_start=True))
    )
    assert run.checksum_at_start == before != primary.checksum("web")
    assert {i.step for i in run.inputs} <= set(range(run.first_step, run.first_step + 3))


def test_runs_of_a_guest_without_inputs_cannot_be_recorded() -> None:
    h = Harness(small_host())
    h.do(CreateVm(vm="p", cpu=1, mem_mib=16, host="h1", memory_mode=MemoryMode.FULL))
    events = h.do(RunVm(host="h1", vm="p", seconds=1, tag="r", record=True))
    assert isinstance(events[0], CommandRejected)
    assert events[0].code == RejectionCode.INVALID_REQUEST


def test_a_flood_of_packets_is_dropped_over_the_runs_budget_and_the_answer_stays_one_message() -> (
    None
):
    h = Harness(small_host())
    flood = GuestInputs(packets_per_s=10_000, max_packet=4080)
    h.do(recorded("busy", inputs=flood))
    run = ran(h.do(RunVm(host="h1", vm="busy", seconds=3, tag="r", record=True)))
    assert run.dropped > 0
    assert len(run.inputs) <= MAX_RUN_INPUTS
    assert sum(len(i.data) for i in run.inputs) <= MAX_RUN_INPUT_BYTES
    assert len(Envelope.wrap(run, producer="hosts").encode()) < MAX_ENVELOPE_BYTES
