"""Frames: whole large pages, spread over NUMA nodes, with per-node accounting."""

from __future__ import annotations

import numpy as np

from services.hosts.memory import LARGE_PAGE_PAGES, HostMemory, VmSpec


def test_a_vm_gets_whole_large_pages_interleaved_over_numa_nodes() -> None:
    """Each page-table row is one whole 2 MiB block; consecutive rows alternate nodes."""
    host = HostMemory([3, 3])
    host.create_vm(VmSpec("vm", 4))
    table = host.page_table("vm")
    blocks = table[:, 0] // LARGE_PAGE_PAGES

    assert np.array_equal(table, blocks[:, None] * LARGE_PAGE_PAGES + np.arange(LARGE_PAGE_PAGES))
    assert (blocks >= 3).astype(int).tolist() == [0, 1, 0, 1]
    assert [node.used_frames for node in host.usage().nodes] == [1024, 1024]


def test_interleaving_starts_on_the_node_with_most_free_large_pages() -> None:
    """A VM starts on the emptier node, alternates, and skips a node once it is full."""
    host = HostMemory([1, 4])
    host.create_vm(VmSpec("vm", 4))
    blocks = host.page_table("vm")[:, 0] // LARGE_PAGE_PAGES
    assert (blocks >= 1).astype(int).tolist() == [1, 0, 1, 1]


def test_node_usage_adds_up_to_the_host() -> None:
    """Per-node used and free frames sum to the host's, and used + free is the total."""
    host = HostMemory([2, 3, 1], swap_blocks=16)
    host.create_vm(VmSpec("a", 3, seed=1))
    host.swap_out("a", [1, 2, 3])
    usage = host.usage()

    assert sum(node.used_frames for node in usage.nodes) == usage.used_frames
    assert sum(node.free_frames for node in usage.nodes) == usage.free_frames
    assert usage.used_frames + usage.free_frames == usage.total_frames == 6 * LARGE_PAGE_PAGES


def test_a_sized_host_splits_its_memory_over_its_nodes() -> None:
    """HostMemory.sized turns MiB into whole large pages per node and swap MiB into blocks."""
    usage = HostMemory.sized(mem_mib=1024, numa_nodes=2, swap_mib=8).usage()
    assert [node.total_frames for node in usage.nodes] == [256 * 512, 256 * 512]
    assert usage.swap_reserved == 2048


def test_a_recycled_large_page_is_zeroed_for_the_next_vm() -> None:
    """Frames freed by one VM hold no trace of its bytes when an empty VM takes them."""
    host = HostMemory([1])
    host.create_vm(VmSpec("old", 1, seed=1))
    host.destroy_vm("old")
    host.create_vm(VmSpec.empty("new", 1))
    assert all(batch.zero.all() for batch in host.export_pages("new"))
