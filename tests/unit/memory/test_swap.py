"""Swap: a thick host reservation that thin per-VM swap files draw on one block per page."""

from __future__ import annotations

import numpy as np
import pytest

from services.hosts.memory import PAGE_SIZE, HostMemory, SwapFull, VmSpec
from tests.unit.memory.support import state, zero_pages


def test_swap_out_then_in_restores_the_bytes() -> None:
    """Pages swapped out free their frames and come back with the same bytes."""
    host = HostMemory([2, 2], swap_blocks=512)
    host.create_vm(VmSpec("vm", 2, seed=1))
    digests, used = host.page_digests("vm"), host.used_frames()
    pages = np.arange(3, 1024, 5)

    assert host.swap_out("vm", pages) == len(pages)
    assert host.used_frames() == used - len(pages)
    assert np.array_equal(host.page_digests("vm"), digests)
    assert host.swap_in("vm", pages) == len(pages)

    assert np.array_equal(host.page_digests("vm"), digests)
    assert host.used_frames() == used
    assert host.usage().swap_free == 512


def test_total_swap_never_exceeds_the_reservation() -> None:
    """Swap files of all VMs together stop at the reservation; one block more is refused."""
    host = HostMemory([4], swap_blocks=100)
    host.create_vm(VmSpec("a", 1, seed=1))
    host.create_vm(VmSpec("b", 1, seed=2))
    host.swap_out("a", range(60))
    host.swap_out("b", range(40))
    assert host.usage().swap_free == 0
    before = state(host)

    with pytest.raises(SwapFull):
        host.swap_out("b", [100])

    assert state(host) == before
    files = host.vm_usage("a").swapped + host.vm_usage("b").swapped
    assert files == host.usage().swapped_pages == 100


def test_swapping_out_a_swapped_page_again_takes_no_block() -> None:
    """Swap-out and swap-in skip pages already where they are asked to go."""
    host = HostMemory([1], swap_blocks=8)
    host.create_vm(VmSpec("vm", 1))
    assert host.swap_out("vm", [1, 1, 2]) == 2
    assert host.swap_out("vm", [1, 2]) == 0
    assert host.swap_in("vm", [0, 1]) == 1
    assert host.usage().swapped_pages == 1


def test_a_write_to_a_swapped_page_brings_it_back_first() -> None:
    """A guest write faults its page in, then writes; a read counts without faulting."""
    host = HostMemory([2], swap_blocks=8)
    host.create_vm(VmSpec("vm", 1, seed=3))
    before = host.read("vm", 4)
    host.swap_out("vm", [4, 5])

    host.write("vm", 4, b"new")
    host.read("vm", 5)

    assert host.read("vm", 4) == b"new" + before[3:]
    assert host.vm_usage("vm").swapped == 1
    assert host.read_counts("vm")[5] == 1


def test_destroying_a_vm_returns_its_frames_and_swap_blocks() -> None:
    """After destroy, the host's frames and swap reservation are all free again."""
    host = HostMemory([2, 2], swap_blocks=64)
    spec = VmSpec("vm", 3, seed=4)
    host.create_vm(spec)
    zeros = zero_pages(spec)[:4]
    host.share_pages("vm", np.full(3, zeros[0]), "vm", zeros[1:])
    host.swap_out("vm", [*range(1, 1536, 40), zeros[1]])

    host.destroy_vm("vm")

    usage = host.usage()
    assert (usage.used_frames, usage.swap_free, host.vms) == (0, 64, ())
    assert all(node.free_large_pages == 2 for node in usage.nodes)


def test_swapped_bytes_come_from_the_swap_block_not_a_reused_frame() -> None:
    """A frame freed by swap-out and reused by another page does not alter the swapped bytes."""
    host = HostMemory([1], swap_blocks=4)
    host.create_vm(VmSpec("vm", 1, seed=5))
    original = host.read("vm", 10)
    host.swap_out("vm", [10])
    host.swap_out("vm", [11])
    host.swap_in("vm", [11])  # takes the lowest free frame: the one page 10 had

    assert host.read("vm", 10) == original
    assert len(original) == PAGE_SIZE
