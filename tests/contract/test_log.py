"""The event log: ordered appends, deduplication, optimistic concurrency, replay."""

from __future__ import annotations

import pytest

from shared.bus import Bus, ConcurrencyError
from tests.contract.messages import vm_created


async def test_appends_get_increasing_sequences_and_replay_in_order(bus: Bus) -> None:
    """Each append lands after the previous one and replay returns them in that order."""
    envs = [vm_created(f"vm{i}") for i in range(5)]
    seqs = [(await bus.append(env)).seq for env in envs]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert await bus.last_seq() == seqs[-1]
    replayed = [entry async for entry in bus.replay()]
    assert [e.seq for e in replayed] == seqs
    assert [e.envelope for e in replayed] == envs


async def test_duplicate_message_id_is_not_appended_twice(bus: Bus) -> None:
    """Appending the same envelope id again reports a duplicate and leaves the log as it was."""
    env = vm_created()
    first = await bus.append(env)
    again = await bus.append(env)
    assert not first.duplicate
    assert again.duplicate
    assert again.seq == first.seq
    assert await bus.last_seq() == first.seq
    assert [e.seq async for e in bus.replay()] == [first.seq]


async def test_stale_expected_version_raises_conflict(bus: Bus) -> None:
    """An append that expects an outdated aggregate version fails with ConcurrencyError."""
    assert await bus.version("vm/web1") == 0
    first = await bus.append(vm_created(), expected_version=0)
    assert await bus.version("vm/web1") == first.seq
    with pytest.raises(ConcurrencyError) as caught:
        await bus.append(vm_created(), expected_version=0)
    assert caught.value.aggregate == "vm/web1"
    assert caught.value.actual == first.seq
    assert await bus.last_seq() == first.seq


async def test_current_expected_version_appends(bus: Bus) -> None:
    """An append naming the aggregate's current version succeeds and advances it."""
    first = await bus.append(vm_created(), expected_version=0)
    second = await bus.append(vm_created(), expected_version=first.seq)
    assert await bus.version("vm/web1") == second.seq
    # Another aggregate's appends do not move this one's version.
    await bus.append(vm_created("other"))
    third = await bus.append(vm_created(), expected_version=second.seq)
    assert third.seq > second.seq


async def test_replay_from_sequence_with_filters(bus: Bus) -> None:
    """Replay starts at the given sequence and keeps only the subjects asked for."""
    seqs: dict[str, list[int]] = {}
    for name in ["a", "b", "a", "c"]:
        result = await bus.append(vm_created(name))
        seqs.setdefault(name, []).append(result.seq)
    only_a = [e.seq async for e in bus.replay(filters=("vm.a",))]
    assert only_a == seqs["a"]
    tail = [e.envelope.data.vm async for e in bus.replay(from_seq=seqs["b"][0])]  # type: ignore[union-attr]
    assert tail == ["b", "a", "c"]
    assert [e async for e in bus.replay(from_seq=seqs["c"][0] + 1)] == []


async def test_append_many_keeps_order_and_dedupes(bus: Bus) -> None:
    """A pipelined batch appends in order; repeating an id inside it is deduplicated."""
    envs = [vm_created(f"vm{i}") for i in range(50)]
    results = await bus.append_many([*envs, envs[0]])
    assert [r.seq for r in results[:50]] == sorted(r.seq for r in results[:50])
    assert results[50].duplicate
    assert len([e async for e in bus.replay()]) == 50
