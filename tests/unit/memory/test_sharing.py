"""Copy-on-write sharing of frames between pages with equal bytes."""

from __future__ import annotations

import numpy as np
import pytest

from services.hosts.memory import Accesses, HostMemory, OutOfFrames, VmSpec
from tests.unit.memory.support import equal_pages, state, zero_pages


def linux_pair(host: HostMemory) -> None:
    host.create_vm(VmSpec("a", 2, seed=1, template="linux"))
    host.create_vm(VmSpec("b", 2, seed=2, template="linux"))


def test_sharing_lowers_used_memory_by_exactly_the_pages_shared() -> None:
    """Sharing n pages of b (each on its own frame) onto a frees exactly n frames."""
    host = HostMemory([4, 4])
    linux_pair(host)
    pages_a, pages_b = equal_pages(host, "a", "b")
    used = host.used_frames()
    sums = host.checksum("a"), host.checksum("b")

    freed = host.share_pages("a", pages_a, "b", pages_b)

    assert len(pages_b) > 300
    assert freed == len(pages_b)
    assert host.used_frames() == used - len(pages_b)
    assert host.usage().saved_frames == len(pages_b)
    assert (host.checksum("a"), host.checksum("b")) == sums


def test_a_write_to_a_shared_page_breaks_sharing_for_the_writer_only() -> None:
    """Writing a shared page gives the writer a private copy; the other VM keeps its bytes."""
    host = HostMemory([4, 4])
    linux_pair(host)
    pages_a, pages_b = equal_pages(host, "a", "b")
    host.share_pages("a", pages_a, "b", pages_b)
    sum_a, used = host.checksum("a"), host.used_frames()
    page_a, page_b = int(pages_a[0]), int(pages_b[0])

    host.write("b", page_b, b"\xff" * 8, offset=100)

    assert host.checksum("a") == sum_a
    assert host.read("b", page_b)[100:108] == b"\xff" * 8
    assert host.read("b", page_b)[:100] == host.read("a", page_a)[:100]
    assert host.page_table("a").reshape(-1)[page_a] != host.page_table("b").reshape(-1)[page_b]
    assert host.used_frames() == used + 1


def test_writing_the_page_shared_from_leaves_the_other_vm_unchanged() -> None:
    """The VM whose frame was kept also copies before writing, so the sharer is untouched."""
    host = HostMemory([4])
    linux_pair(host)
    pages_a, pages_b = equal_pages(host, "a", "b")
    host.share_pages("a", pages_a, "b", pages_b)
    sum_b = host.checksum("b")

    host.write("a", int(pages_a[-1]), b"written")

    assert host.checksum("b") == sum_b


def test_unshare_makes_a_private_copy_with_the_same_bytes() -> None:
    """unshare copies a shared frame for the asking VM; on a private page it does nothing."""
    host = HostMemory([4])
    linux_pair(host)
    pages_a, pages_b = equal_pages(host, "a", "b")
    host.share("a", int(pages_a[0]), "b", int(pages_b[0]))
    used, sums = host.used_frames(), (host.checksum("a"), host.checksum("b"))

    assert host.unshare("b", int(pages_b[0])) is True
    assert host.unshare("b", int(pages_b[0])) is False
    assert host.used_frames() == used + 1
    assert (host.checksum("a"), host.checksum("b")) == sums
    assert host.usage().shared_frames == 0


def test_sharing_a_vms_zero_pages_within_it_collapses_them_to_one_frame() -> None:
    """Zero pages of one VM can all map one frame; every mapper counts in its refcount."""
    host = HostMemory([2])
    host.create_vm(VmSpec("a", 1, seed=3))
    zeros = zero_pages(host.spec("a"))

    freed = host.share_pages("a", np.full(len(zeros) - 1, zeros[0]), "a", zeros[1:])

    frame = host.page_table("a").reshape(-1)[zeros[0]]
    assert freed == len(zeros) - 1
    assert host.frame_refcounts()[frame] == len(zeros)
    assert host.vm_usage("a").shared == len(zeros)


def test_a_write_to_every_mapper_of_a_frame_fits_in_the_frames_sharing_freed() -> None:
    """When one write batch covers every page on a shared frame, one page keeps the frame."""
    host = HostMemory([1])
    host.create_vm(VmSpec("a", 1, seed=3))
    zeros = zero_pages(host.spec("a"))
    host.share_pages("a", np.full(len(zeros) - 1, zeros[0]), "a", zeros[1:])
    assert host.usage().free_frames == len(zeros) - 1
    data = np.full((len(zeros), 1), 7, np.uint8)

    host.apply("a", Accesses(zeros, np.zeros(len(zeros), np.int64), data, zeros[:0]))

    assert host.usage().free_frames == 0
    assert host.usage().shared_frames == 0


def test_sharing_all_of_a_vm_frees_a_whole_large_page_and_a_write_then_needs_a_frame() -> None:
    """Whole freed large pages can host a new VM; a copy-on-write with no free frame is
    refused and changes nothing."""
    host = HostMemory([2])
    host.create_vm(VmSpec("a", 1, seed=4))
    host.create_vm(VmSpec("twin", 1, seed=4))
    pages = np.arange(512)
    assert host.share_pages("a", pages, "twin", pages) == 512
    host.create_vm(VmSpec("c", 1, seed=5))
    before = state(host)

    with pytest.raises(OutOfFrames):
        host.write("twin", 0, b"needs a frame")
    assert state(host) == before
