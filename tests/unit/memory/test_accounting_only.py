"""Accounting-only VMs: frames, swap and counters without bytes, for scale runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from services.hosts.memory import (
    PAGE_SIZE,
    AccountingOnly,
    HostMemory,
    MemoryMode,
    PageBatch,
    VmSpec,
    Workload,
)
from tests.unit.memory.support import state

Operation = Callable[[HostMemory], object]


@pytest.fixture
def host() -> HostMemory:
    host = HostMemory([2, 2], swap_blocks=128)
    host.create_vm(VmSpec("full", 1, seed=1))
    host.create_vm(VmSpec("scale", 2, seed=2, mode=MemoryMode.ACCOUNTING))
    host.apply("scale", Workload(seed=3).step(1024, 0, writes=30, reads=30))
    return host


BYTE_OPERATIONS: dict[str, Operation] = {
    "checksum": lambda h: h.checksum("scale"),
    "page_digests": lambda h: h.page_digests("scale"),
    "read": lambda h: h.read("scale", 0),
    "write": lambda h: h.write("scale", 0, b"x"),
    "share": lambda h: h.share("full", 0, "scale", 0),
    "unshare": lambda h: h.unshare("scale", 0),
    "export": lambda h: h.export_pages("scale"),
    "export_dirty": lambda h: h.export_dirty("scale"),
    "checkpoint": lambda h: h.export_checkpoint("scale"),
    "import": lambda h: h.import_pages(
        "scale", PageBatch(1024, np.array([0]), np.array([True]), np.zeros((0, PAGE_SIZE), "u1"))
    ),
}


@pytest.mark.parametrize("operation", BYTE_OPERATIONS.values(), ids=BYTE_OPERATIONS.keys())
def test_accounting_only_vms_refuse_byte_operations(host: HostMemory, operation: Operation) -> None:
    """Every operation that needs bytes raises AccountingOnly naming the VM, changing nothing."""
    before = state(host)
    with pytest.raises(AccountingOnly, match="'scale' is accounting-only"):
        operation(host)
    assert state(host) == before


def test_accounting_only_vms_hold_frames_counters_and_swap_without_bytes(
    host: HostMemory,
) -> None:
    """Workloads, dirty bits, swap and frame accounting work as for full VMs."""
    assert host.used_frames() == 3 * 512
    assert 0 < len(host.collect_dirty("scale", clear=False)) <= 30
    assert host.read_counts("scale").sum() == 30

    assert host.swap_out("scale", range(100)) == 100
    assert host.used_frames() == 3 * 512 - 100
    host.apply("scale", Workload(seed=3).step(1024, 1, writes=200, reads=0))
    host.swap_in("scale", range(100))

    assert host.vm_usage("scale").swapped == 0
    assert host.used_frames() == 3 * 512


def test_a_host_holds_many_accounting_only_vms_cheaply() -> None:
    """Accounting-only VMs take frames but no bytes, so their count is not bound by RAM."""
    host = HostMemory.sized(mem_mib=64 * 1024, numa_nodes=2)
    for index in range(200):
        host.create_vm(VmSpec(f"vm{index}", 64, seed=index, mode=MemoryMode.ACCOUNTING))
    assert host.usage().used_frames == 200 * 64 * 512
    assert host.usage().nodes[0].used_frames == host.usage().nodes[1].used_frames


def test_a_guest_gets_its_page_arrays_only_once_something_looks_at_its_pages() -> None:
    """Creating a VM allocates its frames but no per-page arrays; the first look at its
    pages makes them (all zero, its table mapping its frames), and heat decays on them."""
    host = HostMemory.sized(mem_mib=1024, numa_nodes=2)
    host.create_vm(VmSpec("quiet", 4, seed=1, mode=MemoryMode.ACCOUNTING))
    host.create_vm(VmSpec("busy", 4, seed=2, mode=MemoryMode.ACCOUNTING))
    guests = {name: host._vm(name) for name in ("quiet", "busy")}
    assert all(g.untouched for g in guests.values())
    host.decay_heat()
    assert guests["quiet"].untouched

    host.apply("busy", Workload(seed=3).step(4 * 512, 0, writes=50, reads=50))
    busy = guests["busy"]
    assert not busy.untouched
    assert guests["quiet"].untouched
    assert busy.table.shape == (4, 512)
    assert len(np.unique(busy.flat)) == 4 * 512
    assert busy.heat.max() > 0
    before = busy.heat.copy()
    host.decay_heat()
    assert (busy.heat <= before).all()
    assert busy.heat.sum() < before.sum()
    assert host.read_counts("quiet").sum() == 0
    assert not guests["quiet"].untouched
