"""Bad input raises a typed error from one root exception and changes nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from services.hosts.memory import (
    PAGE_SIZE,
    Accesses,
    BytesDiffer,
    ContentProfile,
    HostMemory,
    InvalidArgument,
    MemoryModelError,
    OutOfFrames,
    PageBatch,
    PageNotResident,
    PageOutOfRange,
    SizeMismatch,
    UnknownVm,
    VmExists,
    VmSpec,
)
from tests.unit.memory.support import equal_pages, state

Operation = Callable[[HostMemory], object]


@pytest.fixture
def host() -> HostMemory:
    host = HostMemory([3, 3], swap_blocks=32)
    host.create_vm(VmSpec("a", 1, seed=1, template="linux"))
    host.create_vm(VmSpec("b", 1, seed=2, template="linux"))
    host.write("a", 3, b"dirty")
    host.swap_out("b", [5])
    return host


def test_sharing_pages_whose_bytes_differ_is_rejected_and_changes_nothing(
    host: HostMemory,
) -> None:
    """One unequal pair fails the whole batch, naming the first pair that differs."""
    pages_a, pages_b = equal_pages(host, "a", "b")
    resident = pages_b != 5  # the fixture swapped page 5 of b out
    pages_a, pages_b = pages_a[resident][:10], pages_b[resident][:10]
    unequal = next(p for p in range(512) if p not in pages_b.tolist() and p != 5)
    before = state(host)

    with pytest.raises(BytesDiffer) as raised:
        host.share_pages("a", [*pages_a, unequal], "b", [*pages_b, unequal])

    assert (raised.value.page_a, raised.value.page_b, raised.value.pairs) == (unequal, unequal, 1)
    assert state(host) == before


OUT_OF_RANGE: dict[str, Operation] = {
    "write": lambda h: h.write("a", 512, b"x"),
    "negative": lambda h: h.read("a", -1),
    "apply": lambda h: h.apply("a", Accesses.read(np.array([0, 9999]))),
    "share": lambda h: h.share("a", 0, "b", 512),
    "unshare": lambda h: h.unshare("a", 600),
    "swap_out": lambda h: h.swap_out("a", [1, 2, 512]),
    "swap_in": lambda h: h.swap_in("b", [5, 1 << 40]),
    "export": lambda h: h.export_pages("a", [0, 513]),
    "import": lambda h: h.import_pages(
        "a", PageBatch(512, np.array([512]), np.array([True]), np.zeros((0, PAGE_SIZE), np.uint8))
    ),
}


@pytest.mark.parametrize("operation", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_out_of_range_pages_are_rejected_and_change_nothing(
    host: HostMemory, operation: Operation
) -> None:
    """A page outside the VM raises PageOutOfRange before anything changes."""
    before = state(host)
    with pytest.raises(PageOutOfRange):
        operation(host)
    assert state(host) == before


UNKNOWN: dict[str, Operation] = {
    "write": lambda h: h.write("ghost", 0, b"x"),
    "share": lambda h: h.share("a", 0, "ghost", 0),
    "swap_out": lambda h: h.swap_out("ghost", [0]),
    "checksum": lambda h: h.checksum("ghost"),
    "export": lambda h: h.export_dirty("ghost"),
    "destroy": lambda h: h.destroy_vm("ghost"),
    "usage": lambda h: h.vm_usage("ghost"),
    "used_pages": lambda h: h.used_pages("ghost"),
    "resize": lambda h: h.resize_vm("ghost", 1),
}


@pytest.mark.parametrize("operation", UNKNOWN.values(), ids=UNKNOWN.keys())
def test_unknown_vms_are_rejected_and_change_nothing(
    host: HostMemory, operation: Operation
) -> None:
    """Naming a VM the host does not hold raises UnknownVm."""
    before = state(host)
    with pytest.raises(UnknownVm):
        operation(host)
    assert state(host) == before


def import_into_another_size(host: HostMemory) -> None:
    host.create_vm(VmSpec.empty("big", 2))
    host.import_pages("big", next(host.export_pages("a", [0, 1])))


MISMATCHED: dict[str, Operation] = {
    "share lengths": lambda h: h.share_pages("a", [0, 1], "b", [0]),
    "write overrun": lambda h: h.write("a", 0, b"x" * 10, offset=PAGE_SIZE - 5),
    "write too long": lambda h: h.write("a", 0, b"x" * (PAGE_SIZE + 1)),
    "import into another size": import_into_another_size,
}


@pytest.mark.parametrize("operation", MISMATCHED.values(), ids=MISMATCHED.keys())
def test_mismatched_sizes_are_rejected(host: HostMemory, operation: Operation) -> None:
    """Lengths that must agree raise SizeMismatch, and the VMs' memory is unchanged."""
    sums = host.checksum("a"), host.checksum("b")
    with pytest.raises(SizeMismatch):
        operation(host)
    assert (host.checksum("a"), host.checksum("b")) == sums


@pytest.mark.parametrize(
    "build",
    [
        lambda: PageBatch(
            512, np.array([0, 1]), np.array([False, False]), np.zeros((1, 4096), "u1")
        ),
        lambda: PageBatch(512, np.array([0, 1]), np.array([True]), np.zeros((0, 4096), "u1")),
        lambda: PageBatch(512, np.array([0]), np.array([False]), np.zeros((1, 100), "u1")),
        lambda: Accesses(np.array([0, 1]), np.array([0]), np.zeros((2, 8), "u1"), np.array([])),
    ],
    ids=["batch data rows", "batch markers", "batch page width", "accesses"],
)
def test_batches_of_mismatched_lengths_cannot_be_built(build: Callable[[], object]) -> None:
    """A page batch or access batch whose arrays disagree raises SizeMismatch."""
    with pytest.raises(SizeMismatch):
        build()


def test_creating_a_vm_without_enough_whole_large_pages_is_rejected(host: HostMemory) -> None:
    """Free frames scattered in partly used large pages cannot hold a new VM."""
    before = state(host)
    with pytest.raises(OutOfFrames):
        host.create_vm(VmSpec("huge", 5))
    with pytest.raises(VmExists):
        host.create_vm(VmSpec("a", 1))
    assert state(host) == before


def test_sharing_a_swapped_out_page_is_rejected(host: HostMemory) -> None:
    """Only resident pages can share a frame."""
    before = state(host)
    with pytest.raises(PageNotResident):
        host.share("a", 5, "b", 5)
    assert state(host) == before


@pytest.mark.parametrize(
    "build",
    [
        lambda: VmSpec("vm", 0),
        lambda: VmSpec("vm", 1, seed=-1),
        lambda: ContentProfile(zero=0.5, template=0.5, unique=0.5),
        lambda: ContentProfile(zero=-0.1, template=0.6, unique=0.5),
        lambda: HostMemory([]),
        lambda: HostMemory([1], swap_blocks=-1),
        lambda: HostMemory.sized(mem_mib=2, numa_nodes=2),
    ],
    ids=[
        "no pages",
        "negative seed",
        "shares over 1",
        "negative share",
        "no nodes",
        "swap",
        "size",
    ],
)
def test_impossible_specs_are_rejected(build: Callable[[], object]) -> None:
    """Sizes, seeds and shares that cannot describe memory raise InvalidArgument."""
    with pytest.raises(InvalidArgument):
        build()


def test_every_error_derives_from_the_package_root(host: HostMemory) -> None:
    """Callers can catch MemoryModelError for anything the model refuses."""
    with pytest.raises(MemoryModelError):
        host.read("a", 4096)
    with pytest.raises(MemoryModelError):
        list(host.export_pages("a", batch=0))
