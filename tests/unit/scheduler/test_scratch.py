"""A decision's scratch fold is taken for the fold of its append once that lands: the
same state as folding the log's entries, with the log's sequences, or not taken at all."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from schemas import Envelope, Message
from schemas.host import HostRegistered
from schemas.pool import Owner
from schemas.scheduling import MaintenanceStarted, PlaceVm, SetMaintenance
from schemas.service import CommandsIssued
from services.scheduler import scratch as scratch_module
from services.scheduler.commands import answer_group
from services.scheduler.holder import Holder, Knobs
from services.scheduler.rounds import decide_round
from services.scheduler.scratch import FoldMismatch
from services.scheduler.state import SchedulerState, evolve
from shared.effects import batches
from shared.outcome import Outcome
from shared.testing import poll
from tests.unit.scheduler.test_rounds import Log as RoundsLog
from tests.unit.stack import memory_stack

SERVICE = "scheduler-high"


class Log(RoundsLog):
    """The rounds' test log, which also gives an append's entries as the runtime makes
    them."""

    def entries(self, outcomes: Sequence[Outcome]) -> list[tuple[int, Envelope[Message]]]:
        """The entries the runtime appends for ``outcomes`` (outbox records included),
        with the sequences they land at."""
        [batch] = batches(SERVICE, outcomes, 0.0, lambda _id: False)
        first, self.seq = self.seq + 1, self.seq + len(batch.events)
        return [(first + i, env) for i, env in enumerate(batch.events)]


def pool(check: bool = True) -> tuple[Holder, Log]:
    holder = Holder(Owner.HIGH, Knobs(check_folds=check))
    log = Log(holder)
    log.append(
        *(HostRegistered(host=f"h{i}", cpu_cores=16, cpu_mhz=2400, mem_mib=65536) for i in range(3))
    )
    return holder, log


def commands(*messages: Message) -> list[Envelope[Message]]:
    return [Envelope.wrap(m, producer="test") for m in messages]


def folded(
    base: SchedulerState, entries: Sequence[tuple[int, Envelope[Message]]]
) -> SchedulerState:
    state = base
    for seq, env in entries:
        state = evolve(state, seq, env)
    return state


def test_a_group_and_the_round_after_it_are_taken_as_the_log_would_fold_them() -> None:
    """Queued requests keep the order the log gives them, reservations move the pool
    versions to the log's sequences, and the outbox records are folded too."""
    holder, log = pool()
    asks = commands(
        *(PlaceVm(vm=f"v{i}", priority=Owner.HIGH, cpu=1, mem_mib=512) for i in range(4))
    )
    group = answer_group(holder, asks, SERVICE)
    entries = log.entries(group)
    expected = folded(holder.state, entries)
    assert group[0].folded is not None
    assert group[0].folded.adopt(entries)
    assert holder.state == expected
    assert [env.data.vm for env in holder.state.queue()] == ["v0", "v1", "v2", "v3"]  # type: ignore[union-attr]

    outcomes = decide_round(holder, 1, without_high=False)
    entries = log.entries(outcomes)
    assert any(isinstance(env.data, CommandsIssued) for _, env in entries)
    expected = folded(holder.state, entries)
    assert outcomes[0].folded is not None
    assert outcomes[0].folded.adopt(entries)
    assert holder.state == expected
    assert set(holder.state.placed) == {"v0", "v1", "v2", "v3"}
    assert all(v > 3 for v in holder.state.ledger.versions.values())


def test_a_maintenance_visit_is_named_by_the_sequence_it_landed_at() -> None:
    holder, log = pool()
    group = answer_group(holder, commands(SetMaintenance(host="h1", on=True)), SERVICE)
    assert isinstance(group[0].events[0], MaintenanceStarted)
    entries = log.entries(group)
    assert group[0].folded is not None
    assert group[0].folded.adopt(entries)
    assert holder.state.ledger.maintenance == {"h1": entries[0][0]}


def test_a_scratch_is_not_taken_once_the_fold_moved_or_for_part_of_its_events() -> None:
    holder, log = pool()
    asks = commands(PlaceVm(vm="v0", priority=Owner.HIGH, cpu=1, mem_mib=512))
    group = answer_group(holder, asks, SERVICE)
    entries = log.entries(group)
    scratch = group[0].folded
    assert scratch is not None
    assert not scratch.adopt(entries[1:])
    log.append(HostRegistered(host="h9", cpu_cores=4, cpu_mhz=2400, mem_mib=8192))
    assert not scratch.adopt(entries)


def test_a_fold_step_that_keeps_a_sequence_unknown_to_sequenced_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder, log = pool()
    monkeypatch.setattr(scratch_module, "sequenced", lambda state, _seq, _env: state)
    asks = commands(PlaceVm(vm="v0", priority=Owner.HIGH, cpu=1, mem_mib=512))
    group = answer_group(holder, asks, SERVICE)
    assert group[0].folded is not None
    with pytest.raises(FoldMismatch, match="pending"):
        group[0].folded.adopt(log.entries(group))


async def test_a_running_scheduler_takes_its_rounds_and_groups_folds() -> None:
    """On the bus, with every taken fold checked against the log's."""
    async with memory_stack(hosts=2) as stack:
        for i in range(6):
            await stack.client.send(PlaceVm(vm=f"v{i}", priority=Owner.HIGH, cpu=1, mem_mib=512))
        await poll(lambda: stack.of_type("VmCreated"), lambda found: len(found) == 6, what="6 VMs")
        high = stack.running["scheduler-high"].runtime
        # The groups that queued the requests, and the rounds that placed them.
        assert high.adopted >= 2
