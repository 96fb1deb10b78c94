"""Used memory, and resizing VMs by whole large pages."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash

from services.hosts.memory import (
    PAGE_SIZE,
    Accesses,
    BelowUsedMemory,
    ContentProfile,
    HostMemory,
    InvalidArgument,
    MemoryMode,
    MemoryModelError,
    OutOfFrames,
    VmSpec,
)
from tests.unit.memory.support import content_end, mappers_match_refcounts, state, zero_pages

# Page 154 is the last non-zero content page of seed 10 with this profile, over 1024 pages.
SPARSE = ContentProfile(zero=0.995, template=0.0, unique=0.005)


def prefix_checksum(host: HostMemory, vm: str, pages: int) -> str:
    """xxh3_128 of the VM's first ``pages`` pages: its checksum were it that size."""
    out = np.zeros((pages, PAGE_SIZE), np.uint8)
    for batch in host.export_pages(vm, np.arange(pages)):
        out[batch.pages[~batch.zero]] = batch.data
    return str(xxhash.xxh3_128(out.data).hexdigest())


def writes(pages: list[int]) -> Accesses:
    """One 1-byte write of 0xff to each of ``pages``."""
    count = len(pages)
    data = np.full((count, 1), 0xFF, np.uint8)
    return Accesses(np.asarray(pages), np.zeros(count, np.int64), data, np.zeros(0, np.int64))


def test_used_pages_is_one_past_the_highest_page_that_is_not_all_zeros() -> None:
    """A zero VM uses 0 pages; a written byte makes its page the top, swapped out or not;
    writing it back to zero lowers the top to the next non-zero page."""
    host = HostMemory([2], swap_blocks=8)
    host.create_vm(VmSpec.empty("a", 2))
    assert host.used_pages("a") == 0

    host.write("a", 3, b"x")
    host.write("a", 700, b"\x01", offset=PAGE_SIZE - 1)
    assert host.used_pages("a") == 701
    host.swap_out("a", [3, 700])
    assert host.used_pages("a") == 701

    host.write("a", 700, b"\x00", offset=PAGE_SIZE - 1)
    assert host.used_pages("a") == 4


def test_used_pages_scans_large_vms_from_the_top_in_chunks() -> None:
    """On a 20-large-page VM the highest non-zero page is found in any chunk of the scan."""
    host = HostMemory([20])
    host.create_vm(VmSpec.empty("big", 20))
    host.write("big", 100, b"low")
    assert host.used_pages("big") == 101
    host.write("big", 5000, b"mid")
    assert host.used_pages("big") == 5001
    host.write("big", 20 * 512 - 1, b"top")
    assert host.used_pages("big") == 20 * 512


def test_full_and_accounting_only_vms_of_one_spec_use_the_same_pages() -> None:
    """A seeded VM uses up to its last non-zero content page, with or without bytes."""
    host = HostMemory([2, 2])
    host.create_vm(VmSpec("full", 2, seed=10, profile=SPARSE))
    host.create_vm(VmSpec("scale", 2, seed=10, profile=SPARSE, mode=MemoryMode.ACCOUNTING))
    assert content_end(host.spec("full")) == 155
    assert host.used_pages("full") == host.used_pages("scale") == 155


def test_growing_keeps_every_page_and_adds_whole_large_pages_of_zeros() -> None:
    """Grown by k large pages, a VM keeps its pages' bytes (prefix checksum, digests) and
    counters, gains k * 512 zero pages on k whole large pages, and uses k * 512 more frames."""
    host = HostMemory([3, 3], swap_blocks=16)
    host.create_vm(VmSpec("a", 2, seed=7, template="linux"))
    host.write("a", 10, b"dirty")
    host.swap_out("a", [11, 900])
    host.apply("a", Accesses.read(np.array([5, 5, 1000])))
    checksum, digests = host.checksum("a"), host.page_digests("a")
    used_frames, used_pages = host.used_frames(), host.used_pages("a")

    host.resize_vm("a", 5)

    assert (host.spec("a").large_pages, host.spec("a").pages) == (5, 2560)
    assert prefix_checksum(host, "a", 1024) == checksum
    assert np.array_equal(host.page_digests("a")[:1024], digests)
    added = host.page_table("a")[2:]
    blocks = added[:, 0] // 512
    assert np.array_equal(added, blocks[:, None] * 512 + np.arange(512))
    assert len(set(blocks.tolist())) == 3
    assert all(batch.zero.all() for batch in host.export_pages("a", np.arange(1024, 2560)))
    assert host.used_frames() == used_frames + 3 * 512
    assert host.used_pages("a") == used_pages
    assert host.collect_dirty("a", clear=False).tolist() == [10]
    reads, heat = host.read_counts("a"), host.heat("a")
    assert (len(reads), len(heat)) == (2560, 2560)
    assert (reads[5], reads[1000], reads[1024:].sum(), heat[1024:].sum()) == (2, 1, 0, 0)


def test_growing_places_large_pages_over_the_nodes_as_creating_does() -> None:
    """The added large pages land on the nodes a new VM of that size would get."""
    grown, created = HostMemory([4, 4]), HostMemory([4, 4])
    grown.create_vm(VmSpec.empty("a", 1))
    created.create_vm(VmSpec.empty("a", 1))

    grown.resize_vm("a", 4)
    created.create_vm(VmSpec.empty("b", 3))

    assert grown.usage().nodes == created.usage().nodes
    assert [node.used_frames for node in grown.usage().nodes] == [1024, 1024]


def test_shrinking_releases_exactly_the_trailing_frames_and_swap_blocks() -> None:
    """Shrunk from 4 to 1 large pages, a VM frees every frame and swap block of the 3 trailing
    large pages and keeps the first one's frames, bytes, dirty bits, read counts and heat."""
    host = HostMemory([2, 2], swap_blocks=16)
    host.create_vm(VmSpec.empty("a", 4))
    host.write("a", 7, b"kept")
    host.apply("a", Accesses.read(np.array([7, 1500])))
    host.swap_out("a", [8, 600, 601, 2047])
    kept_block = ~host.page_table("a")[0, 8]
    head, tail = host.page_table("a")[0], host.page_table("a")[1:].reshape(-1)
    used, checksum = host.used_frames(), prefix_checksum(host, "a", 512)

    host.resize_vm("a", 1)

    assert host.used_frames() == used - np.count_nonzero(tail >= 0) == 512 - 1
    assert (host.frame_refcounts()[tail[tail >= 0]] == 0).all()
    assert np.array_equal(host.page_table("a"), head[None, :])
    assert host.swap_blocks_in_use().tolist() == [kept_block]
    assert sum(node.free_large_pages for node in host.usage().nodes) == 3
    assert host.spec("a").large_pages == 1
    assert host.checksum("a") == checksum
    assert host.collect_dirty("a", clear=False).tolist() == [7]
    assert (len(host.read_counts("a")), host.read_counts("a")[7]) == (512, 1)
    assert len(host.heat("a")) == 512


def test_shrinking_past_shared_pages_leaves_the_other_vm_intact() -> None:
    """Trailing pages shared with another VM, either way round, drop one reference each: the
    other VM keeps its bytes and frames, refcounts still equal mappers, and used memory falls
    by the trailing frames less those the other VM still maps."""
    host = HostMemory([4])
    spec_a = VmSpec("a", 1, seed=3)
    host.create_vm(spec_a)
    host.create_vm(VmSpec.empty("b", 2))
    host.write("b", 0, b"data")
    zeros = zero_pages(spec_a)[:10]
    host.share_pages("b", np.arange(512, 517), "a", zeros[:5])  # a maps b's trailing frames
    host.share_pages("a", zeros[5:], "b", np.arange(600, 605))  # b's trailing pages map a's
    frames_a = host.page_table("a").reshape(-1)[zeros]
    checksum_a, used = host.checksum("a"), host.used_frames()

    host.resize_vm("b", 1)

    assert host.used_frames() == used - (512 - 5 - 5)
    assert host.checksum("a") == checksum_a
    assert np.array_equal(host.page_table("a").reshape(-1)[zeros], frames_a)
    assert (host.frame_refcounts()[frames_a] == 1).all()
    assert host.usage().shared_frames == 0
    assert mappers_match_refcounts(host)
    host.write("a", int(zeros[0]), b"now private")
    assert host.used_frames() == used - 502


def test_shrinking_below_the_used_pages_is_rejected_and_changes_nothing() -> None:
    """BelowUsedMemory names the VM, the size asked for and the pages in use; a shrink to the
    used pages' own large pages is allowed."""
    host = HostMemory([4], swap_blocks=8)
    host.create_vm(VmSpec.empty("a", 3))
    host.write("a", 512, b"x")
    host.swap_out("a", [512])
    before = state(host)

    with pytest.raises(BelowUsedMemory) as raised:
        host.resize_vm("a", 1)

    assert isinstance(raised.value, MemoryModelError)
    assert (raised.value.vm, raised.value.large_pages, raised.value.used_pages) == ("a", 1, 513)
    assert state(host) == before
    assert host.spec("a").large_pages == 3
    host.resize_vm("a", 2)
    assert host.spec("a").large_pages == 2


@pytest.mark.parametrize("large_pages", [0, -1])
def test_resizing_to_no_large_pages_is_rejected(large_pages: int) -> None:
    """A size below one large page raises InvalidArgument and changes nothing."""
    host = HostMemory([2])
    host.create_vm(VmSpec.empty("a", 1))
    before = state(host)
    with pytest.raises(InvalidArgument):
        host.resize_vm("a", large_pages)
    assert state(host) == before


def test_growing_past_the_free_whole_large_pages_is_rejected() -> None:
    """Free frames in partly used large pages do not count: OutOfFrames, nothing changed."""
    host = HostMemory([2, 2], swap_blocks=8)
    host.create_vm(VmSpec.empty("a", 2))
    host.create_vm(VmSpec.empty("b", 1))
    host.swap_out("b", [0])
    before = state(host)

    with pytest.raises(OutOfFrames):
        host.resize_vm("a", 4)

    assert state(host) == before
    host.resize_vm("a", 3)
    assert host.usage().free_frames == 1


def test_accounting_only_vms_resize_by_their_content_and_writes() -> None:
    """Without bytes, used pages are the seeded content's extent and the highest page written;
    resizing moves frames, swap blocks and counters as for full VMs."""
    host = HostMemory([4, 4], swap_blocks=16)
    host.create_vm(VmSpec("scale", 2, seed=10, profile=SPARSE, mode=MemoryMode.ACCOUNTING))
    host.create_vm(VmSpec.empty("empty", 3, mode=MemoryMode.ACCOUNTING))
    assert (host.used_pages("scale"), host.used_pages("empty")) == (155, 0)

    host.apply("empty", writes([5, 700]))
    host.swap_out("empty", [900, 1200])
    with pytest.raises(BelowUsedMemory):
        host.resize_vm("empty", 1)
    used = host.used_frames()
    host.resize_vm("empty", 2)
    assert host.used_frames() == used - 511
    assert len(host.swap_blocks_in_use()) == 1
    assert host.collect_dirty("empty", clear=False).tolist() == [5, 700]

    host.resize_vm("scale", 1)
    host.resize_vm("scale", 4)
    assert host.used_pages("scale") == 155
    host.apply("scale", writes([1800]))
    assert host.used_pages("scale") == 1801
    assert host.used_frames() == used - 511 + 2 * 512
    assert host.vm_usage("scale").pages == len(host.read_counts("scale")) == 2048
    assert host.spec("scale").large_pages == 4
