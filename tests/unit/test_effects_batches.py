"""Outcomes carried out together land in one append, guarded by what they expect."""

from __future__ import annotations

import pytest

from schemas import Envelope
from schemas.envelope import MAX_ENVELOPE_BYTES, EnvelopeTooLarge
from schemas.memory import PagePair, SharePages
from schemas.service import CommandsIssued
from schemas.vm import PowerOnVm, VmCreated
from shared.bus import BATCH_LIMIT
from shared.bus.memory import MemoryBus
from shared.effects import (
    RECORD_BYTES,
    RECORD_COMMANDS,
    Batch,
    batches,
    first_id,
    issued,
    named,
    record_parts,
)
from shared.outcome import Outcome


def created(vm: str, host: str) -> VmCreated:
    return VmCreated(vm=vm, host=host, cpu=1, mem_mib=64, priority="low", powered_on=False)


async def test_an_expectation_guards_the_batchs_first_event_of_its_aggregate() -> None:
    """An outcome that expects an aggregate's version after another outcome of the same
    batch wrote that aggregate unguarded (a round's housekeeping, then a reservation on
    the same host): the expectation guards the first write, so the batch lands."""
    bus = MemoryBus()
    await bus.append(Envelope.wrap(created("x", "h0"), producer="s"))
    version = await bus.version("vm/x")
    housekeeping = Outcome(events=[created("y", "h1"), created("x", "h1")], key="housekeeping")
    reservation = Outcome(events=[created("x", "h2")], key="reserve", expect={"vm/x": version})
    [batch] = batches("s", [housekeeping, reservation], 0.0, lambda _: False)
    assert batch.expected == {1: version}
    await bus.append_batch(batch.events, expected=batch.expected)
    assert await bus.version("vm/x") == version + 3


def test_a_name_a_decision_gives_is_fixed_by_what_it_is_about() -> None:
    """Migration names in logs already written keep their meaning: the same parts give
    the same name as before the scheme moved out of the scheduler, other parts another."""
    assert named("mnt", "h1", "v1", "vm3") == "mnt-7c591d1ef08059be"
    assert named("reb", 17, "vm3") == "reb-500be8f4e55d5e05"
    assert named("reb", 18, "vm3") != named("reb", 17, "vm3")


def power_on(vm: str) -> PowerOnVm:
    return PowerOnVm(vm=vm, host="h1")


def recorded(batch: Batch) -> list[list[str]]:
    """The commands each outbox record of the batch holds, by VM, in log order."""
    return [
        [c.data.vm for c in issued(e.data)]
        for e in batch.events
        if isinstance(e.data, CommandsIssued)
    ]


def test_the_commands_of_many_decisions_share_a_record_in_the_order_they_were_decided() -> None:
    """One record for the decisions with events (not one each); a decision of commands
    alone keeps its own, the first envelope of its outcome, after the ones before it."""
    with_events = [
        Outcome(events=[created(f"v{i}", "h1")], commands=[power_on(f"v{i}")], key=f"k{i}")
        for i in range(3)
    ]
    alone = Outcome(commands=[power_on("w")], key="alone")
    last = Outcome(events=[created("z", "h1")], commands=[power_on("z")], key="last")
    [batch] = batches("s", [*with_events, alone, last], 0.0, lambda _: False)
    assert recorded(batch) == [["v0", "v1", "v2"], ["w"], ["z"]]
    assert [c.data.vm for c in batch.commands] == ["v0", "v1", "v2", "w", "z"]
    records = [e for e in batch.events if isinstance(e.data, CommandsIssued)]
    assert records[1].id == first_id("s", alone)
    assert len({e.id for e in batch.events}) == len(batch.events)
    assert {e.data.batch for e in records} == {batch.id}


def test_a_record_holds_a_bounded_number_of_commands_and_appends_stay_within_the_limit() -> None:
    many = [
        Outcome(events=[created(f"v{i}", "h1")], commands=[power_on(f"v{i}")], key=f"k{i}")
        for i in range(BATCH_LIMIT)
    ]
    out = batches("s", many, 0.0, lambda _: False)
    assert all(len(b.events) <= BATCH_LIMIT for b in out)
    assert sum(len(b.outcomes) for b in out) == BATCH_LIMIT
    for batch in out:
        sizes = [len(r) for r in recorded(batch)]
        assert all(size <= RECORD_COMMANDS for size in sizes)
        assert sum(sizes) == len(batch.commands)
    commands = [c.data.vm for b in out for c in b.commands]
    assert commands == [f"v{i}" for i in range(BATCH_LIMIT)]


def share(pairs: int, name: str) -> SharePages:
    pair = PagePair(vm_a=name, page_a=1, vm_b=name, page_b=2)
    return SharePages(host="h1", pairs=[pair] * pairs)


def test_outbox_records_stay_below_the_envelope_limit_however_large_their_commands() -> None:
    """Commands that together exceed what one envelope holds (sharing proposals naming
    long VMs) are recorded in several records, each one a readable envelope; the first
    still names the outcome's first envelope."""
    long_name = "v" * 63
    alone = Outcome(commands=[share(700, long_name) for _ in range(3)], key="alone")
    shared = Outcome(
        events=[created("x", "h1")], commands=[share(700, long_name) for _ in range(3)]
    )
    [batch] = batches("s", [alone, shared], 0.0, lambda _: False)
    records = [e for e in batch.events if isinstance(e.data, CommandsIssued)]
    assert len(records) >= 4
    assert records[0].id == first_id("s", alone)
    for record in records:
        assert len(record.encode()) <= MAX_ENVELOPE_BYTES
    assert sum(len(issued(r.data)) for r in records) == 6


def test_a_command_too_large_for_any_record_is_refused_before_anything_is_written() -> None:
    """A command (or an event) larger than an envelope may be is a typed error when it
    is encoded, not an entry in the log that no reader takes."""
    with pytest.raises(EnvelopeTooLarge):
        batches("s", [Outcome(commands=[share(2_048, "v" * 63)], key="big")], 0.0, lambda _: False)
    with pytest.raises(EnvelopeTooLarge):
        record_parts(["x" * RECORD_BYTES])
