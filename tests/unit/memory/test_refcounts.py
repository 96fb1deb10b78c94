"""Reference counts kept per large page until a page's frames differ."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.hosts.memory.geometry import LARGE_PAGE_PAGES
from services.hosts.memory.guest import MemoryMode, VmSpec
from services.hosts.memory.host import HostMemory
from services.hosts.memory.refcounts import RefCounts
from tests.unit.memory.support import mappers_match_refcounts

BLOCKS = 4

_whole_block = st.tuples(st.just("whole"), st.integers(0, BLOCKS - 1), st.integers(-2, 3))
_frames = st.tuples(
    st.just("frames"),
    st.lists(st.integers(0, BLOCKS * LARGE_PAGE_PAGES - 1), min_size=1, max_size=40),
    st.integers(-2, 3),
)
_set = st.tuples(st.just("set"), st.integers(0, BLOCKS - 1), st.integers(0, 2))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_whole_block, _frames, _set), max_size=25))
def test_counts_agree_with_one_count_per_frame(steps: list[tuple[str, object, int]]) -> None:
    """Whatever mix of whole-block and single-frame changes, every frame reads the count a
    plain per-frame array holds, and so do the sums."""
    refs = RefCounts(BLOCKS)
    plain = np.zeros(BLOCKS * LARGE_PAGE_PAGES, np.int64)
    for kind, where, amount in steps:
        if kind == "set":
            assert isinstance(where, int)
            refs.set_blocks(np.asarray([where]), amount)
            plain[where * LARGE_PAGE_PAGES : (where + 1) * LARGE_PAGE_PAGES] = amount
            continue
        if kind == "whole":
            assert isinstance(where, int)
            frames = np.arange(where * LARGE_PAGE_PAGES, (where + 1) * LARGE_PAGE_PAGES)
        else:
            assert isinstance(where, list)
            frames = np.unique(np.asarray(where, np.int64))
        refs.add(frames, np.full(len(frames), amount, np.int64))
        plain[frames] += amount
    every = np.arange(len(plain), dtype=np.int64)
    assert np.array_equal(refs.of(every), plain)
    assert np.array_equal(refs.every_frame(), plain)
    assert refs.total() == int(plain.sum())
    assert refs.above(1) == int(np.count_nonzero(plain > 1))
    for block in range(BLOCKS):
        rows = plain[block * LARGE_PAGE_PAGES : (block + 1) * LARGE_PAGE_PAGES]
        assert np.array_equal(refs.block(block), rows)


def test_a_whole_block_change_keeps_one_count_and_a_single_frame_gets_a_row() -> None:
    """Adding to all 512 frames of a block at once keeps it one count; one frame on its own
    gives the block a row; setting the block again drops the row."""
    refs = RefCounts(2)
    refs.add(np.arange(LARGE_PAGE_PAGES), np.ones(LARGE_PAGE_PAGES, np.int64))
    assert not refs.counted_alone(np.arange(2)).any()
    refs.add(np.asarray([3]), np.asarray([1]))
    assert refs.counted_alone(np.arange(2)).tolist() == [True, False]
    assert refs.of(np.asarray([2, 3])).tolist() == [1, 2]
    refs.set_blocks(np.asarray([0]), 0)
    assert not refs.counted_alone(np.arange(2)).any()
    assert refs.total() == 0


def test_accounting_only_vms_cost_no_memory_per_emulated_page() -> None:
    """A 64 GiB host costs under 100 bytes per 2 MiB large page (a per-frame count alone
    would be 2 KiB each), and fifty 1 GiB accounting-only VMs on it under 20 KB each (a
    byte per page would be 256 KiB each)."""
    tracemalloc.start()
    try:
        host = HostMemory.sized(mem_mib=64 * 1024, numa_nodes=2)
        built, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for index in range(50):
            host.create_vm(VmSpec(f"vm{index}", 512, seed=index, mode=MemoryMode.ACCOUNTING))
        usage = host.usage()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert usage.used_frames == 50 * 512 * LARGE_PAGE_PAGES
    assert usage.mapped_pages == usage.used_frames
    assert built < 100 * 32 * 1024, f"{built} bytes for the host"
    assert peak - built < 50 * 20_000, f"{peak - built} bytes for the VMs"


def test_destroying_a_vm_nothing_looked_into_frees_its_frames_for_the_next() -> None:
    """A VM destroyed before anything touched its pages gives back all its frames; the
    next VM gets them, and every frame's count still equals its mappers."""
    host = HostMemory.sized(mem_mib=64, numa_nodes=2)
    host.create_vm(VmSpec("kept", 8, seed=1))
    host.create_vm(VmSpec("gone", 16, seed=2, mode=MemoryMode.ACCOUNTING))
    host.share_pages(*_twin_pages(host))
    host.destroy_vm("gone")
    assert host.usage().used_frames == 8 * LARGE_PAGE_PAGES - host.usage().saved_frames
    host.create_vm(VmSpec("next", 24, seed=3, mode=MemoryMode.ACCOUNTING))
    assert host.usage().free_frames == host.usage().saved_frames == 1
    assert mappers_match_refcounts(host)


def _twin_pages(host: HostMemory) -> tuple[str, list[int], str, list[int]]:
    """Two zero pages of ``kept`` to share with each other."""
    zeros = (page for page in range(8 * LARGE_PAGE_PAGES) if not any(host.read("kept", page)))
    return "kept", [next(zeros)], "kept", [next(zeros)]
