"""Export and import of guest pages: migration, dirty-page rounds and checkpoints."""

from __future__ import annotations

import numpy as np

from services.hosts.memory import (
    LARGE_PAGE_PAGES,
    PAGE_SIZE,
    HostMemory,
    PageBatch,
    VmSpec,
    Workload,
)
from tests.unit.memory.support import equal_pages, zero_pages


def migrate(batches: list[PageBatch], destination: HostMemory, vm: str) -> None:
    for batch in batches:
        destination.import_pages(vm, batch)


def test_export_then_import_reproduces_the_checksum() -> None:
    """Exported pages imported into an empty VM on another host give the same checksum."""
    source, destination = HostMemory([4, 4]), HostMemory([3, 3, 3])
    source.create_vm(VmSpec("vm", 3, seed=8, template="linux"))
    destination.create_vm(VmSpec.empty("vm", 3))

    migrate(list(source.export_pages("vm", batch=100)), destination, "vm")

    assert destination.checksum("vm") == source.checksum("vm")
    assert np.array_equal(destination.page_digests("vm"), source.page_digests("vm"))


def test_zero_pages_travel_as_markers_and_the_destination_keeps_whole_large_pages() -> None:
    """A zero page carries no bytes; on import it is a zeroed frame inside a whole large page."""
    source, destination = HostMemory([4]), HostMemory([2, 2])
    spec = VmSpec("vm", 2, seed=9)
    source.create_vm(spec)
    destination.create_vm(VmSpec("vm", 2, seed=10))  # not zero: the markers must clear it

    batches = list(source.export_pages("vm", batch=64))
    migrate(batches, destination, "vm")

    markers = np.concatenate([b.pages[b.zero] for b in batches])
    assert np.array_equal(np.sort(markers), zero_pages(spec))
    assert sum(b.wire_bytes for b in batches) == (spec.pages - len(markers)) * PAGE_SIZE
    assert destination.read("vm", int(markers[0])) == bytes(PAGE_SIZE)
    table = destination.page_table("vm")
    blocks = table[:, 0] // LARGE_PAGE_PAGES
    assert np.array_equal(table, blocks[:, None] * LARGE_PAGE_PAGES + np.arange(LARGE_PAGE_PAGES))
    assert destination.used_frames() == spec.pages
    assert destination.checksum("vm") == source.checksum("vm")


def test_shared_and_swapped_pages_export_with_their_bytes() -> None:
    """Pages on shared frames or in swap export the bytes the guest sees."""
    source, destination = HostMemory([4], swap_blocks=64), HostMemory([2])
    source.create_vm(VmSpec("a", 1, seed=1, template="linux"))
    source.create_vm(VmSpec("vm", 1, seed=2, template="linux"))
    pages_a, pages_vm = equal_pages(source, "a", "vm")
    source.share_pages("a", pages_a, "vm", pages_vm)
    source.swap_out("vm", range(0, 512, 9))
    destination.create_vm(VmSpec.empty("vm", 1))

    migrate(list(source.export_pages("vm")), destination, "vm")

    assert destination.checksum("vm") == source.checksum("vm")


def test_dirty_export_carries_only_written_pages_and_clears_them() -> None:
    """After a checkpoint, each dirty export sends just the pages written since the last one."""
    primary, secondary = HostMemory([4]), HostMemory([4])
    primary.create_vm(VmSpec("vm", 2, seed=3))
    secondary.create_vm(VmSpec.empty("vm", 2))
    workload = Workload(seed=4)
    primary.apply("vm", workload.step(1024, 0, writes=50, reads=0))
    migrate(list(primary.export_checkpoint("vm")), secondary, "vm")
    assert len(primary.collect_dirty("vm", clear=False)) == 0

    accesses = workload.step(1024, 1, writes=80, reads=0)
    primary.apply("vm", accesses)
    batches = list(primary.export_dirty("vm", batch=16))
    migrate(batches, secondary, "vm")

    sent = np.concatenate([b.pages for b in batches])
    assert np.array_equal(sent, np.unique(accesses.write_pages))
    assert secondary.checksum("vm") == primary.checksum("vm")
    assert list(primary.export_dirty("vm")) == []


def test_export_reads_each_batch_when_it_is_produced() -> None:
    """A write between two batches shows in the later batch and in the dirty bits."""
    host = HostMemory([2])
    host.create_vm(VmSpec("vm", 1, seed=5))
    batches = host.export_pages("vm", batch=256)
    next(batches)

    host.write("vm", 300, b"late")

    second = next(batches)
    row = int(np.count_nonzero(~second.zero[: 300 - 256]))
    assert second.data[row, :4].tobytes() == b"late"
    assert host.collect_dirty("vm").tolist() == [300]
