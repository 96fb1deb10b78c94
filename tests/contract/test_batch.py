"""Atomic appends: a decision's events land whole or not at all, on every bus."""

from __future__ import annotations

import pytest

from shared.bus import BATCH_LIMIT, Bus, BusError, ConcurrencyError
from tests.contract.messages import vm_created


async def test_a_batch_lands_whole_and_in_order(bus: Bus) -> None:
    """Every event of a batch is in the log afterwards, in the batch's order, each with
    its own increasing sequence; replay gives them back as they were appended."""
    before = await bus.append(vm_created("before"))
    envs = [vm_created(f"vm{i}") for i in range(5)]
    results = await bus.append_batch(envs)
    seqs = [r.seq for r in results]
    assert not any(r.duplicate for r in results)
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert seqs[0] > before.seq
    assert await bus.last_seq() == seqs[-1]
    replayed = [e async for e in bus.replay(from_seq=before.seq + 1)]
    assert [e.envelope for e in replayed] == envs
    assert [e.seq for e in replayed] == seqs
    assert await bus.version("vm/vm4") == seqs[-1]


async def test_a_batch_appended_again_is_a_duplicate_and_changes_nothing(bus: Bus) -> None:
    """The same batch again (its acknowledgement was lost, say) appends nothing."""
    envs = [vm_created(f"vm{i}") for i in range(3)]
    first = await bus.append_batch(envs)
    again = await bus.append_batch(envs)
    assert all(r.duplicate for r in again)
    assert await bus.last_seq() == first[-1].seq
    assert len([e async for e in bus.replay()]) == 3


async def test_a_stale_expected_version_appends_none_of_the_batch(bus: Bus) -> None:
    """One stale expectation refuses the whole batch: not even the events before it land."""
    taken = await bus.append(vm_created("web1"))
    await bus.append(vm_created("web1"))
    envs = [vm_created("a"), vm_created("web1"), vm_created("b")]
    with pytest.raises(ConcurrencyError) as caught:
        await bus.append_batch(envs, expected={1: taken.seq})
    assert caught.value.aggregate == "vm/web1"
    kept = [e.envelope.subject async for e in bus.replay() if e.envelope]
    assert kept == ["vm/web1", "vm/web1"]


async def test_a_guard_behind_an_earlier_write_of_its_aggregate_is_a_conflict(bus: Bus) -> None:
    """A guard on an aggregate the batch already wrote is judged against what that write
    left: expecting the version before the batch is a version conflict, not another
    error, and nothing lands."""
    web = await bus.append(vm_created("web1"))
    envs = [vm_created("web1"), vm_created("web1")]
    with pytest.raises(ConcurrencyError) as caught:
        await bus.append_batch(envs, expected={1: web.seq})
    assert caught.value.aggregate == "vm/web1"
    assert await bus.version("vm/web1") == web.seq


async def test_current_expected_versions_append_and_move_the_versions(bus: Bus) -> None:
    """Expectations that hold let the batch land; the versions are the batch's sequences."""
    web = await bus.append(vm_created("web1"))
    envs = [vm_created("new"), vm_created("web1")]
    results = await bus.append_batch(envs, expected={0: 0, 1: web.seq})
    assert await bus.version("vm/new") == results[0].seq
    assert await bus.version("vm/web1") == results[1].seq


async def test_a_batch_beyond_the_limit_is_refused_whole(bus: Bus) -> None:
    """More events than one atomic append may hold: an error, and nothing appended."""
    envs = [vm_created(f"vm{i}") for i in range(BATCH_LIMIT + 1)]
    with pytest.raises(BusError):
        await bus.append_batch(envs)
    assert await bus.last_seq() == 0
