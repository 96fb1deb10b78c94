"""Template forks, private copies on a node, and the reads of shared pages."""

from __future__ import annotations

import numpy as np
import pytest

from services.hosts.memory import HostMemory, PageNotResident, VmExists, VmSpec
from services.hosts.memory.errors import ReadOnly
from tests.unit.memory.support import equal_pages, mappers_match_refcounts, state


def test_a_fork_maps_every_page_of_its_parent_and_copies_no_frame() -> None:
    """A child starts with its parent's checksum and takes no frame of its own."""
    host = HostMemory([4, 4])
    host.create_vm(VmSpec("parent", 3, seed=4))
    used = host.used_frames()

    host.fork_vm("parent", "child")

    assert host.checksum("child") == host.checksum("parent")
    assert host.used_frames() == used
    assert np.array_equal(host.page_table("child"), host.page_table("parent"))
    assert host.vm_usage("child").shared == 3 * 512
    assert mappers_match_refcounts(host)


def test_a_child_owns_only_what_it_writes_and_never_reaches_parent_or_sibling() -> None:
    """A child's write copies that one page; the template and the other child keep their
    bytes."""
    host = HostMemory([4, 4])
    host.create_vm(VmSpec("parent", 2, seed=4))
    host.fork_vm("parent", "c1")
    host.fork_vm("parent", "c2")
    before = host.checksum("parent")
    used = host.used_frames()

    host.write("c1", 7, b"\x01" * 64, offset=128)

    assert host.used_frames() == used + 1
    assert host.checksum("parent") == before == host.checksum("c2")
    assert host.checksum("c1") != before
    assert host.vm_usage("c1").shared == 2 * 512 - 1
    assert host.unshared_again == 1
    assert mappers_match_refcounts(host)


def test_a_template_is_read_only() -> None:
    """Nothing writes a template's memory once it has children."""
    host = HostMemory([4])
    host.create_vm(VmSpec("parent", 1, seed=1))
    host.fork_vm("parent", "child")
    with pytest.raises(ReadOnly):
        host.write("parent", 0, b"x")


def test_forks_of_forks_share_one_frame_until_written() -> None:
    """A grandchild maps the frames its parent maps, which are the template's."""
    host = HostMemory([4])
    host.create_vm(VmSpec("os", 1, seed=2))
    host.fork_vm("os", "app")
    host.write("app", 3, b"app")
    host.fork_vm("app", "replica")

    assert host.checksum("replica") == host.checksum("app") != host.checksum("os")
    assert host.page_table("replica").reshape(-1)[0] == host.page_table("os").reshape(-1)[0]
    assert mappers_match_refcounts(host)


def test_destroying_children_then_the_template_frees_every_frame() -> None:
    """Refcounts: the frames go only with their last mapper."""
    host = HostMemory([4])
    host.create_vm(VmSpec("parent", 2, seed=3))
    used = host.used_frames()
    for n in range(3):
        host.fork_vm("parent", f"c{n}")
    host.write("c0", 1, b"y")
    host.destroy_vm("c1")
    assert host.used_frames() == used + 1
    host.destroy_vm("parent")
    assert host.checksum("c2") != ""
    host.destroy_vm("c0")
    host.destroy_vm("c2")
    assert host.used_frames() == 0
    assert mappers_match_refcounts(host)


def test_a_fork_is_refused_when_the_parent_has_swapped_pages_or_the_name_exists() -> None:
    """Nothing changes on a refused fork."""
    host = HostMemory([4], swap_blocks=64)
    host.create_vm(VmSpec("parent", 1, seed=1))
    host.create_vm(VmSpec("other", 1, seed=2))
    with pytest.raises(VmExists):
        host.fork_vm("parent", "other")
    host.swap_out("parent", [5])
    before = state(host)
    with pytest.raises(PageNotResident):
        host.fork_vm("parent", "child")
    assert state(host) == before


def test_a_private_copy_goes_to_the_node_asked_for() -> None:
    """An unshare for a reader on node 1 copies the page onto node 1; the sharer stays."""
    host = HostMemory([4, 4])
    host.create_vm(VmSpec("a", 2, seed=1))
    host.create_vm(VmSpec("b", 2, seed=2))
    pages_a, pages_b = equal_pages(host, "a", "b")
    host.share_pages("a", pages_a, "b", pages_b)
    on_zero = pages_b[host.page_nodes("b")[pages_b] == 0][:5]

    copied = host.unshare_pages("b", on_zero, node=1)

    assert copied == len(on_zero) == 5
    assert (host.page_nodes("b")[on_zero] == 1).all()
    assert host.unshared_again == 5
    assert host.unshare_pages("b", on_zero, node=1) == 0


def test_reads_of_shared_pages_are_counted_with_their_frames_node() -> None:
    """Only shared pages are reported, each once with its read count."""
    host = HostMemory([4, 4])
    host.create_vm(VmSpec("a", 1, seed=1))
    host.fork_vm("a", "b")
    host.write("b", 9, b"mine")

    pages, reads, nodes = host.shared_reads("b", np.asarray([3, 3, 9, 4, 3], np.int64))

    assert pages.tolist() == [3, 4]
    assert reads.tolist() == [3, 1]
    assert nodes.tolist() == host.page_nodes("b")[[3, 4]].tolist()


def test_range_digests_match_the_whole_guest_digests() -> None:
    """Digests of some pages are those pages' entries of the full digest array."""
    host = HostMemory([4])
    host.create_vm(VmSpec("a", 1, seed=1))
    pages = np.arange(100, 200, dtype=np.int64)
    assert np.array_equal(host.page_digests("a", pages), host.page_digests("a")[100:200])


def test_a_child_resized_or_swapped_keeps_every_refcount_true() -> None:
    """Growing, shrinking and swapping a child moves only its own references."""
    host = HostMemory([8, 8], swap_blocks=1024)
    host.create_vm(VmSpec("parent", 2, seed=6))
    host.fork_vm("parent", "child")
    before = host.checksum("parent")

    host.swap_out("child", np.arange(0, 600, 3))
    host.resize_vm("child", 4)
    host.resize_vm("child", 1, keep_used=False)
    host.swap_in("child", np.arange(0, 512, 3))

    assert host.checksum("parent") == before
    assert mappers_match_refcounts(host)
    host.destroy_vm("child")
    host.destroy_vm("parent")
    assert host.used_frames() == 0
