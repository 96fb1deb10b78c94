"""Helpers for the memory-model tests: a comparable snapshot of a host, and duplicate pages."""

from __future__ import annotations

import numpy as np

from services.hosts.memory import HostMemory, MemoryMode, PageKind, VmSpec, content_layout
from services.hosts.memory.geometry import Ints

State = tuple[object, ...]


def state(host: HostMemory) -> State:
    """Everything a failed operation must leave as it was, in a form ``==`` compares."""
    per_vm = tuple(
        (
            vm,
            host.page_table(vm).tobytes(),
            host.collect_dirty(vm, clear=False).tobytes(),
            host.read_counts(vm).tobytes(),
            host.checksum(vm) if host.spec(vm).mode is MemoryMode.FULL else None,
        )
        for vm in host.vms
    )
    refcounts = host.frame_refcounts().tobytes()
    return (host.usage(), refcounts, host.swap_blocks_in_use().tobytes(), per_vm)


def equal_pages(host: HostMemory, vm_a: str, vm_b: str) -> tuple[Ints, Ints]:
    """Pairs (page of a, page of b) with equal bytes: every page of b that has a twin in a."""
    digests_a, digests_b = host.page_digests(vm_a), host.page_digests(vm_b)
    values, first = np.unique(digests_a, return_index=True)
    found = np.isin(digests_b, values)
    pages_b = np.flatnonzero(found).astype(np.int64)
    pages_a = first[np.searchsorted(values, digests_b[found])].astype(np.int64)
    return pages_a, pages_b


def zero_pages(spec: VmSpec) -> Ints:
    """The pages a VM's content starts as zero."""
    kinds = content_layout(spec.seed, spec.profile, spec.pages).kinds
    return np.flatnonzero(kinds == PageKind.ZERO).astype(np.int64)


def content_end(spec: VmSpec) -> int:
    """1 + the highest page a VM's seeded content makes non-zero (0 if none)."""
    kinds = content_layout(spec.seed, spec.profile, spec.pages).kinds
    filled = np.flatnonzero(kinds != PageKind.ZERO)
    return int(filled[-1]) + 1 if len(filled) else 0


def mappers_match_refcounts(host: HostMemory) -> bool:
    """Every frame's refcount is the number of page-table entries (of all VMs) mapping it."""
    tables = [host.page_table(vm).reshape(-1) for vm in host.vms]
    resident = np.concatenate([np.zeros(0, np.int64), *(t[t >= 0] for t in tables)])
    refcounts = host.frame_refcounts()
    return bool(np.array_equal(np.bincount(resident, minlength=len(refcounts)), refcounts))
