"""Moving a guest's pages between NUMA nodes: same bytes, target node, hottest first."""

from __future__ import annotations

import numpy as np
import pytest

from services.hosts.memory import HostMemory, OutOfFrames, VmSpec, Workload
from tests.unit.memory.support import mappers_match_refcounts, state


def two_nodes(vm_large_pages: int = 4, per_node: int = 4) -> HostMemory:
    """A host of two nodes with one full VM spread over both (its vCPUs on node 0)."""
    host = HostMemory([per_node, per_node], swap_blocks=64)
    host.create_vm(VmSpec("vm", vm_large_pages, seed=5))
    return host


def test_a_vm_runs_where_most_of_its_memory_is() -> None:
    """A VM's vCPUs start on the node holding most of its large pages, node 0 on a tie."""
    host = HostMemory([4, 4])
    host.create_vm(VmSpec("one", 1))
    host.create_vm(VmSpec("odd", 3))  # starts on node 1, which has more free large pages
    host.create_vm(VmSpec("even", 2))

    assert host.vcpu_node("one") == 0
    assert np.bincount(host.page_nodes("odd")).tolist() == [512, 1024]
    assert host.vcpu_node("odd") == 1
    assert np.bincount(host.page_nodes("even")).tolist() == [512, 512]
    assert host.vcpu_node("even") == 0


def test_moving_every_page_keeps_the_bytes_and_lands_them_on_the_target() -> None:
    """Every page ends on the target node; the checksum, frames in use and refcounts hold."""
    host = two_nodes()
    checksum, used = host.checksum("vm"), host.used_frames()
    pages = host.numa_pages("vm", 1)
    assert len(pages) == 1024  # the half on node 0

    moved = host.move_pages("vm", pages, 1)

    assert moved == 1024
    assert host.checksum("vm") == checksum
    assert (host.page_nodes("vm") == 1).all()
    assert host.used_frames() == used
    assert host.free_frames(0) == 4 * 512
    assert mappers_match_refcounts(host)
    assert len(host.numa_pages("vm", 1)) == 0


def test_hot_first_order_puts_the_most_used_pages_first() -> None:
    """Hot-first lists pages by falling heat (then read count); sequential in page order."""
    host = two_nodes()
    workload = Workload(seed=5)
    for step in range(6):
        host.apply("vm", workload.step(host.spec("vm").pages, step, writes=64, reads=256))

    hot = host.numa_pages("vm", 1, hot_first=True)
    sequential = host.numa_pages("vm", 1, hot_first=False)

    heat = host.heat("vm")[hot]
    assert (np.diff(heat) <= 0).all()
    assert heat[0] > 0
    assert heat[-1] == 0
    assert np.array_equal(np.sort(hot), sequential)
    assert (np.diff(sequential) > 0).all()
    hot_set = np.isin(hot, workload.hot_pages(host.spec("vm").pages))
    # The pages moved first are mostly the workload's hot set; the last ones none of it.
    assert hot_set[:50].mean() > 0.9
    assert not hot_set[-50:].any()


def test_a_large_page_moved_apart_loses_its_2_mib_backing() -> None:
    """Moving a few pages of a large page breaks its 2 MiB backing; moving all of them in
    order into a free block leaves it whole, and so does moving the few back."""
    host = two_nodes()
    on_node_0 = host.numa_pages("vm", 1, hot_first=False)
    first, second = on_node_0[:512], on_node_0[512:]
    assert host.whole_large_pages("vm") == 4

    host.move_pages("vm", first, 1)
    assert host.whole_large_pages("vm") == 4
    host.move_pages("vm", second[[3, 70, 400]], 1)
    assert host.whole_large_pages("vm") == 3
    host.move_pages("vm", second[[3, 70, 400]], 0)
    assert host.whole_large_pages("vm") == 4


def test_shared_and_swapped_pages_stay_and_later_frames_go_to_the_vcpus() -> None:
    """Shared pages are not moved (their frame has other mappers) and swapped pages have no
    frame; after the vCPUs move, a swap-in lands on their node."""
    host = two_nodes(vm_large_pages=2)
    host.create_vm(VmSpec("twin", 2, seed=5))  # the same content: every page has a twin
    pages = host.numa_pages("vm", 1, hot_first=False)
    shared_page, swapped_page = int(pages[0]), int(pages[1])
    host.share("twin", shared_page, "vm", shared_page)
    host.swap_out("vm", [swapped_page])

    host.move_vcpus("vm", 1)
    left = host.numa_pages("vm", 1, hot_first=False)
    moved = host.move_pages("vm", pages, 1)

    assert shared_page not in left
    assert swapped_page not in left
    assert moved == len(pages) - 2
    nodes = host.page_nodes("vm")
    assert (nodes[shared_page], nodes[swapped_page]) == (0, -1)
    host.swap_in("vm", [swapped_page])
    assert host.page_nodes("vm")[swapped_page] == 1
    assert host.checksum("vm") == host.checksum("twin")
    assert mappers_match_refcounts(host)


def test_a_move_beyond_the_free_frames_of_the_node_changes_nothing() -> None:
    """With too few free frames on the target node the move is refused as a whole."""
    host = two_nodes(vm_large_pages=4, per_node=3)  # node 1: 1 large page free
    before = state(host)

    with pytest.raises(OutOfFrames):
        host.move_pages("vm", host.numa_pages("vm", 1), 1)

    assert state(host) == before


def test_local_share_counts_accesses_on_the_vcpu_node() -> None:
    """An access is local when its page's frame is on the vCPUs' node; swapped is not."""
    host = two_nodes(vm_large_pages=2)
    nodes = host.page_nodes("vm")
    near, far = int(np.flatnonzero(nodes == 0)[0]), int(np.flatnonzero(nodes == 1)[0])

    assert host.local_share("vm", [near, near, far, near]) == 0.75
    assert host.local_share("vm", []) is None
    host.move_vcpus("vm", 1)
    assert host.local_share("vm", [near, far]) == 0.5
    host.swap_out("vm", [far])
    assert host.local_share("vm", [near, far]) == 0.0
