"""Helpers for the page-sharing tests: a brute-force count of duplicate pages, and a scan
driven straight against a host's memory (no bus)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from schemas.memory import PagePair, SharePages
from schemas.sharing import GetPageDigests, PageDigests
from services.hosts import page_sharing
from services.hosts.memory import HostMemory, MemoryMode
from services.hosts.page_sharing import SharePlan
from services.hosts.state import Fleet, Vm
from services.sharing.scanner import I64, HostScan

HOST = "h1"


def duplicates(mem: HostMemory, vms: Sequence[str]) -> int:
    """Pages whose bytes another page (of these VMs) holds too, less one per content:
    what sharing every duplicate saves, counted byte for byte."""
    pages = np.concatenate([mem.copy_pages(vm, np.arange(mem.spec(vm).pages)) for vm in vms])
    rows = np.ascontiguousarray(pages).view(np.dtype((np.void, pages.shape[1]))).ravel()
    return len(rows) - len(np.unique(rows))


def fleet_of(mem: HostMemory) -> Fleet:
    vms = {
        name: Vm(name, HOST, 1, 64, "low", "off", memory_mode=MemoryMode.FULL)  # type: ignore[arg-type]
        for name in mem.vms
    }
    return Fleet(vms=vms)


def never_held(_vm: str, pages: I64) -> I64:
    return pages[:0]


def scan_pass(
    mem: HostMemory,
    scan: HostScan,
    budget: int = 4_096,
    held: Callable[[str, I64], I64] = never_held,
    proposed: list[PagePair] | None = None,
) -> int:
    """One whole pass of ``scan`` over ``mem``, sharing what it proposes as the host
    would (and listing it in ``proposed``); return the pairs shared."""
    fleet = fleet_of(mem)
    scan.start_pass([(vm, mem.spec(vm).pages) for vm in sorted(mem.vms)])
    shared = 0
    while not scan.taken:
        ranges = scan.take(budget)
        reply: PageDigests = page_sharing.digests(
            fleet, mem, GetPageDigests(host=HOST, ranges=ranges)
        )
        found = scan.compare(reply, held)
        if proposed is not None:
            proposed += found.pairs
        for i in range(0, len(found.pairs), 2_048):
            cmd = SharePages(host=HOST, pairs=found.pairs[i : i + 2_048], skip_differing=True)
            plan = page_sharing.share_plan({HOST: mem}, cmd)
            assert isinstance(plan, SharePlan)
            for pair in plan.pairs:
                mem.share(pair.vm_a, pair.page_a, pair.vm_b, pair.page_b)
            shared += len(plan.pairs)
    return shared
