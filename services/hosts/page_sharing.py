"""What the hosts' hardware tells a page-sharing policy: which pairs of a SharePages can
be shared (and what that saves), what an unshare copies, the digests a scan asks for,
the reads of shared pages each tick, and the tree of forks."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from schemas.memory import PagePair, SharePages, UnsharePages
from schemas.service import RejectionCode
from schemas.sharing import (
    MAX_SHARED_READS,
    GetPageDigests,
    PageDigests,
    PageRange,
    SharedPageReads,
    TreeNode,
    UnshareReason,
    VmTree,
)
from schemas.vm import MemoryMode
from services.hosts.memory import HostMemory, MemoryModelError
from services.hosts.memory.geometry import Ints, Mask
from services.hosts.state import Fleet

Problem = tuple[RejectionCode, str]


class PairsDiffer(MemoryModelError):
    """Pairs of a logged sharing that no longer hold equal bytes (after a rebuild)."""


@dataclass(frozen=True, slots=True)
class SharePlan:
    """The pairs a SharePages shares, those already on one frame, those left out."""

    pairs: list[PagePair]
    already: int = 0
    differing: int = 0
    saved_frames: int = 0


@dataclass(frozen=True, slots=True)
class UnsharePlan:
    copied: int
    node: int | None


def share_plan(memory: Mapping[str, HostMemory], cmd: SharePages) -> SharePlan | Problem:
    mem = memory.get(cmd.host)
    if mem is None:
        return RejectionCode.UNKNOWN_HOST, f"host {cmd.host} is not emulated here"
    vms_a = [p.vm_a for p in cmd.pairs]
    vms_b = [p.vm_b for p in cmd.pairs]
    pages_a = np.asarray([p.page_a for p in cmd.pairs], np.int64)
    pages_b = np.asarray([p.page_b for p in cmd.pairs], np.int64)
    for vms, pages in ((vms_a, pages_a), (vms_b, pages_b)):
        for vm, page in zip(vms, pages.tolist(), strict=True):
            size = mem.spec(vm).pages
            if page >= size:
                return RejectionCode.PAGE_OUT_OF_RANGE, f"{vm} has pages 0..{size - 1}, not {page}"
    entries_a, entries_b = _entries(mem, vms_a, pages_a), _entries(mem, vms_b, pages_b)
    swapped = (entries_a < 0) | (entries_b < 0)
    same = (entries_a == entries_b) & ~swapped
    differ = swapped.copy()
    comparable = np.flatnonzero(~swapped & ~same)
    differ[comparable] = ~_equal_bytes(mem, vms_a, pages_a, vms_b, pages_b, comparable)
    if differ.any() and not cmd.skip_differing:
        i = int(np.flatnonzero(differ)[0])
        pair = cmd.pairs[i]
        if swapped[i]:
            return RejectionCode.WRONG_STATE, (
                f"page {pair.page_a} of {pair.vm_a} or page {pair.page_b} of {pair.vm_b} "
                "is swapped out"
            )
        return RejectionCode.BYTES_DIFFER, (
            f"page {pair.page_a} of {pair.vm_a} and page {pair.page_b} of {pair.vm_b} "
            "hold different bytes"
        )
    apply = np.flatnonzero(~differ & ~same)
    return SharePlan(
        pairs=[cmd.pairs[i] for i in apply.tolist()],
        already=int(np.count_nonzero(same)),
        differing=int(np.count_nonzero(differ)),
        saved_frames=_freed(mem, entries_a[apply], entries_b[apply], vms_b, pages_b, apply),
    )


def unshare_plan(memory: Mapping[str, HostMemory], cmd: UnsharePages) -> UnsharePlan | Problem:
    mem = memory.get(cmd.host)
    if mem is None:
        return RejectionCode.UNKNOWN_HOST, f"host {cmd.host} is not emulated here"
    size = mem.spec(cmd.vm).pages
    bad = [p for p in cmd.pages if p >= size]
    if bad:
        return RejectionCode.PAGE_OUT_OF_RANGE, f"{cmd.vm} has pages 0..{size - 1}, not {bad[0]}"
    # A copy for a read pattern goes where the reader runs.
    node = None if cmd.reason is UnshareReason.REQUESTED else mem.vcpu_node(cmd.vm)
    return UnsharePlan(mem.copies_needed(cmd.vm, cmd.pages), node)


def digests(fleet: Fleet, mem: HostMemory | None, query: GetPageDigests) -> PageDigests:
    """The digests and frames of the asked pages of full-memory guests on the host."""
    ranges: list[PageRange] = []
    digest_parts: list[npt.NDArray[np.uint64]] = []
    frame_parts: list[Ints] = []
    for asked in query.ranges:
        vm = fleet.vms.get(asked.vm)
        if mem is None or vm is None or vm.host != query.host or asked.vm not in mem.vms:
            continue
        if vm.memory_mode != MemoryMode.FULL:
            continue
        count = min(asked.count, mem.spec(asked.vm).pages - asked.first)
        if count <= 0:
            continue
        pages = np.arange(asked.first, asked.first + count, dtype=np.int64)
        entries = mem.page_table(asked.vm).reshape(-1)[pages]
        ranges.append(PageRange(vm=asked.vm, first=asked.first, count=count))
        digest_parts.append(mem.page_digests(asked.vm, pages))
        frame_parts.append(np.where(entries >= 0, entries, -1))
    return PageDigests(
        host=query.host,
        ranges=ranges,
        digests=np.concatenate([np.zeros(0, "<u8"), *digest_parts]).astype("<u8").tobytes(),
        frames=np.concatenate([np.zeros(0, "<i8"), *frame_parts]).astype("<i8").tobytes(),
    )


@dataclass
class SharedReads:
    """Reads of shared pages in each host's last tick, for its next sample."""

    _ticks: dict[str, list[SharedPageReads]] = field(default_factory=lambda: defaultdict(list))

    def saw(self, mem: HostMemory, host: str, vm: str, reads: Ints) -> None:
        pages, counts, nodes = mem.shared_reads(vm, reads)
        if len(pages):
            self._ticks[host].append(
                SharedPageReads(
                    vm=vm,
                    vcpu_node=mem.vcpu_node(vm),
                    pages=pages.tolist(),
                    reads=counts.tolist(),
                    nodes=nodes.tolist(),
                )
            )

    def take(self, host: str) -> list[SharedPageReads]:
        """The tick's reads, the most read pages first when there are too many to tell."""
        seen = self._ticks.pop(host, [])
        total = sum(len(r.pages) for r in seen)
        if total <= MAX_SHARED_READS:
            return seen
        floor = sorted((n for r in seen for n in r.reads), reverse=True)[MAX_SHARED_READS - 1]
        kept: list[SharedPageReads] = []
        room = MAX_SHARED_READS
        for r in seen:
            keep = [i for i, n in enumerate(r.reads) if n > floor]
            keep += [i for i, n in enumerate(r.reads) if n == floor][: max(0, room - len(keep))]
            keep = sorted(keep[:room])
            room -= len(keep)
            if keep:
                kept.append(
                    SharedPageReads(
                        vm=r.vm,
                        vcpu_node=r.vcpu_node,
                        pages=[r.pages[i] for i in keep],
                        reads=[r.reads[i] for i in keep],
                        nodes=[r.nodes[i] for i in keep],
                    )
                )
        return kept


def vm_tree(fleet: Fleet, memory: Mapping[str, HostMemory]) -> VmTree:
    """Every template and fork this process's hosts hold, with their pages."""
    nodes = []
    for vm in sorted(fleet.vms.values(), key=lambda v: v.name):
        mem = memory.get(vm.host)
        if not (vm.templated or vm.fork_of) or mem is None or vm.name not in mem.vms:
            continue
        usage = mem.vm_usage(vm.name)
        nodes.append(
            TreeNode(
                vm=vm.name,
                host=vm.host,
                parent=vm.fork_of,
                template=vm.templated,
                shared_pages=usage.shared,
                private_pages=usage.resident - usage.shared,
            )
        )
    return VmTree(nodes=nodes)


def _entries(mem: HostMemory, vms: list[str], pages: Ints) -> Ints:
    names = np.asarray(vms)
    out = np.empty(len(pages), np.int64)
    for vm in np.unique(names).tolist():
        at = np.flatnonzero(names == vm)
        out[at] = mem.page_table(vm).reshape(-1)[pages[at]]
    return out


def _equal_bytes(
    mem: HostMemory, vms_a: list[str], pages_a: Ints, vms_b: list[str], pages_b: Ints, at: Ints
) -> Mask:
    names_a, names_b = np.asarray(vms_a)[at], np.asarray(vms_b)[at]
    equal = np.zeros(len(at), np.bool_)
    for vm_a, vm_b in {(a, b) for a, b in zip(names_a.tolist(), names_b.tolist(), strict=True)}:
        rows = np.flatnonzero((names_a == vm_a) & (names_b == vm_b))
        left = mem.copy_pages(vm_a, pages_a[at[rows]])
        right = mem.copy_pages(vm_b, pages_b[at[rows]])
        equal[rows] = (left == right).all(axis=1)
    return equal


def _freed(
    mem: HostMemory, frames_a: Ints, frames_b: Ints, vms_b: list[str], pages_b: Ints, at: Ints
) -> int:
    """Frames the pairs leave with no mapper: a page's old frame, when every page that maps
    it moves away (each page counted once) and no pair moves onto it."""
    moving = {
        (vms_b[i], int(pages_b[i])): int(f)
        for i, f in zip(at.tolist(), frames_b.tolist(), strict=True)
    }
    if not moving:
        return 0
    frames, leaving = np.unique(np.asarray(list(moving.values()), np.int64), return_counts=True)
    emptied = (mem.frame_mappers(frames) == leaving) & ~np.isin(frames, frames_a)
    return int(np.count_nonzero(emptied))
