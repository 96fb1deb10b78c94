"""The guest memory of one emulated host: the API the host service uses."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from services.hosts.memory import (
    access,
    digest,
    forks,
    numa,
    paging,
    sharing,
    sizing,
    transfer,
    usage,
)
from services.hosts.memory.content import content_layout, fill_large_page
from services.hosts.memory.errors import InvalidArgument, ReadOnly, UnknownVm, VmExists
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import (
    LARGE_PAGE_SIZE,
    PAGE_SIZE,
    Ints,
    PageBytes,
    readonly,
    swap_block,
)
from services.hosts.memory.guest import GuestMemory, MemoryMode, PageSelection, VmSpec
from services.hosts.memory.swap import SwapSpace
from services.hosts.memory.transfer import PageBatch
from services.hosts.memory.usage import MemoryUsage, VmUsage
from services.hosts.memory.workload import Accesses

HEAT_DECAY = 0.5 ** (1 / 8)  # with one decay per tick, an untouched page's heat halves in 8


class HostMemory:
    """Frames on NUMA nodes, a swap reservation, and the memory of the VMs placed here.

    Every method checks its whole input before it changes anything: when it raises (always a
    ``MemoryModelError``), the host is as it was.
    """

    def __init__(self, large_pages_per_node: Sequence[int], swap_blocks: int = 0) -> None:
        self._pool = FramePool(large_pages_per_node)
        self._swap = SwapSpace(swap_blocks)
        self._vms: dict[str, GuestMemory] = {}
        # Fork templates: the base of their children's pages, which nothing writes.
        self._templates: set[str] = set()
        # Copies of shared pages made since the host started (writes, unshares).
        self.unshared_again = 0

    @classmethod
    def sized(cls, mem_mib: int, numa_nodes: int = 1, swap_mib: int = 0) -> HostMemory:
        """A host whose ``mem_mib`` is split evenly (in whole large pages) over its nodes."""
        large_pages = mem_mib * 2**20 // LARGE_PAGE_SIZE
        if numa_nodes < 1 or large_pages < numa_nodes:
            raise InvalidArgument(f"{mem_mib} MiB cannot span {numa_nodes} NUMA node(s)")
        per_node = [large_pages // numa_nodes] * numa_nodes
        return cls(per_node, swap_mib * 2**20 // PAGE_SIZE)

    # VMs

    @property
    def vms(self) -> tuple[str, ...]:
        return tuple(self._vms)

    def spec(self, vm: str) -> VmSpec:
        return self._vm(vm).spec

    def create_vm(self, spec: VmSpec) -> None:
        """Place a VM in whole large pages spread over the nodes, filled with its content."""
        if spec.name in self._vms:
            raise VmExists(spec.name)
        full = spec.mode is MemoryMode.FULL
        blocks = self._pool.allocate_large_pages(spec.large_pages, backed=full)
        if full:
            layout = content_layout(spec.seed, spec.profile, spec.pages)
            for large_page, block in enumerate(blocks.tolist()):
                fill_large_page(
                    self._pool.block_bytes(block),
                    seed=spec.seed,
                    template=spec.template,
                    large_page=large_page,
                    layout=layout,
                )
        self._vms[spec.name] = GuestMemory(spec, blocks, self._pool.block_node[blocks])

    def fork_vm(self, parent: str, child: str) -> None:
        """A child mapping every page of ``parent`` copy-on-write (no bytes copied); the
        parent becomes a read-only template."""
        if child in self._vms:
            raise VmExists(child)
        self._vms[child] = forks.fork(self._pool, self._vm(parent), child)
        self._templates.add(parent)

    def make_template(self, vm: str) -> None:
        """Nothing writes the VM's memory from now on (until it is destroyed)."""
        self._vm(vm).require_bytes()
        self._templates.add(vm)

    def destroy_vm(self, vm: str) -> None:
        guest = self._vm(vm)
        blocks = guest.untouched_blocks
        if blocks is not None:
            self._pool.release_blocks(blocks)
        else:
            entries = guest.flat
            self._pool.release_table(guest.table)
            self._swap.give_back(swap_block(entries[entries < 0]))
        del self._vms[vm]
        self._templates.discard(vm)

    def rename_vm(self, vm: str, new: str) -> None:
        """``vm``'s memory goes on as ``new``'s (a backup that takes over its primary)."""
        if new in self._vms:
            raise VmExists(new)
        guest = self._vm(vm)
        del self._vms[vm]
        guest.spec = replace(guest.spec, name=new)
        self._vms[new] = guest
        if vm in self._templates:
            self._templates.discard(vm)
            self._templates.add(new)

    def used_pages(self, vm: str) -> int:
        """The guest's used memory in pages: 1 + its highest page that is not all zeros, or
        0 if every page is zero; the smallest size ``resize_vm`` can shrink it to.

        Full VMs are read byte for byte (swapped-out pages included). Accounting-only VMs have
        no bytes: for them it is 1 + the highest page that their seeded content filled (a
        non-zero page of the content layout) or that a guest access has written.
        """
        return sizing.used_pages(self._pool, self._swap, self._vm(vm))

    def resize_vm(self, vm: str, large_pages: int, *, keep_used: bool = True) -> None:
        """Resize a VM to ``large_pages`` whole 2 MiB large pages.

        Growing appends zero pages in whole large pages, placed over the nodes as by
        ``create_vm`` (``OutOfFrames`` if too few whole large pages are free); shrinking
        drops the trailing large pages, releasing their frames (less those other pages still
        share) and swap blocks (``BelowUsedMemory`` if that would cut below ``used_pages``,
        unless ``keep_used`` is False: a shrink decided on the guest's working set).
        Dirty bits, read counts and heat of kept pages are kept; new pages start clear.
        """
        sizing.resize(self._pool, self._swap, self._vm(vm), large_pages, keep_used=keep_used)

    # Guest accesses

    def apply(self, vm: str, accesses: Accesses) -> None:
        if vm in self._templates and len(accesses.write_pages):
            raise ReadOnly(vm)
        self.unshared_again += access.apply(self._pool, self._swap, self._vm(vm), accesses)

    def shared_reads(self, vm: str, reads: PageSelection) -> tuple[Ints, Ints, Ints]:
        """Of the pages read (one entry a read), those on a shared frame now: each once,
        its read count, and its frame's NUMA node."""
        guest = self._vm(vm)
        return sharing.reads_of_shared(self._pool, guest, guest.check_pages(reads))

    def write(self, vm: str, page: int, data: bytes, offset: int = 0) -> None:
        self._vm(vm).require_bytes()
        self.apply(vm, Accesses.write(page, data, offset))

    def read(self, vm: str, page: int) -> bytes:
        guest = self._vm(vm)
        guest.require_bytes()
        pages = guest.check_pages([page])
        access.apply(self._pool, self._swap, guest, Accesses.read(pages))
        return access.gather(self._pool, self._swap, guest, pages).tobytes()

    def copy_pages(self, vm: str, pages: PageSelection) -> PageBytes:
        """A copy of ``pages``' bytes, one row each, as the host reads them (not the guest:
        no read is counted, no heat added)."""
        guest = self._vm(vm)
        guest.require_bytes()
        return access.gather(self._pool, self._swap, guest, guest.check_pages(pages))

    def collect_dirty(self, vm: str, *, clear: bool = True) -> Ints:
        """Pages written since the last clearing collect, like nested-page-table dirty bits."""
        guest = self._vm(vm)
        dirty = np.flatnonzero(guest.dirty).astype(np.int64)
        if clear:
            guest.dirty[:] = False
        return dirty

    def clear_dirty(self, vm: str, pages: PageSelection) -> None:
        guest = self._vm(vm)
        guest.dirty[guest.check_pages(pages)] = False

    def check_pages(self, vm: str, pages: PageSelection) -> Ints:
        """``pages`` as page numbers of the VM; PageOutOfRange names one outside it."""
        return self._vm(vm).check_pages(pages)

    def read_counts(self, vm: str) -> npt.NDArray[np.uint32]:
        return readonly(self._vm(vm).reads)

    def heat(self, vm: str) -> npt.NDArray[np.float32]:
        return readonly(self._vm(vm).heat)

    def decay_heat(self, factor: float = HEAT_DECAY) -> None:
        """Age every page's heat by ``factor``: call once per emulated tick."""
        if not 0 <= factor <= 1:
            raise InvalidArgument(f"heat decays by a factor in [0, 1], not {factor}")
        for guest in self._vms.values():
            if not guest.untouched:
                guest.heat *= np.float32(factor)

    # Sharing and swap

    def share(self, vm_a: str, page_a: int, vm_b: str, page_b: int) -> int:
        """Map page_b of vm_b onto page_a's frame (copy-on-write); return frames freed."""
        return self.share_pages(vm_a, [page_a], vm_b, [page_b])

    def share_pages(
        self, vm_a: str, pages_a: PageSelection, vm_b: str, pages_b: PageSelection
    ) -> int:
        a, b = self._vm(vm_a), self._vm(vm_b)
        return sharing.share(self._pool, a, a.check_pages(pages_a), b, b.check_pages(pages_b))

    def unshare(self, vm: str, page: int) -> bool:
        """Give a shared page a private copy; False if it was private already."""
        return self.unshare_pages(vm, [page]) == 1

    def unshare_pages(self, vm: str, pages: PageSelection, node: int | None = None) -> int:
        """Give each shared page of ``pages`` a private copy (on ``node``, or its home
        node); return how many were copied."""
        guest = self._vm(vm)
        guest.require_bytes()
        wanted = guest.check_pages(pages)
        if node is not None:
            node = numa.check_node(self._pool, node)
        copied = sharing.make_private(self._pool, guest, wanted, node)
        self.unshared_again += copied
        return copied

    def copies_needed(self, vm: str, pages: PageSelection) -> int:
        """How many of ``pages`` an unshare would copy."""
        guest = self._vm(vm)
        return len(sharing.copies_needed(self._pool, guest, guest.check_pages(pages)))

    def swap_out(self, vm: str, pages: PageSelection) -> int:
        guest = self._vm(vm)
        return paging.swap_out(self._pool, self._swap, guest, guest.check_pages(pages))

    def swap_in(self, vm: str, pages: PageSelection) -> int:
        guest = self._vm(vm)
        return paging.swap_in(self._pool, self._swap, guest, guest.check_pages(pages))

    # NUMA placement (see ``numa``)

    def vcpu_node(self, vm: str) -> int:
        return self._vm(vm).vcpu_node

    def page_nodes(self, vm: str) -> Ints:
        """The NUMA node of each page's frame, in guest order; -1 for a swapped-out page."""
        return numa.node_of(self._pool, self._vm(vm).flat)

    def free_frames(self, node: int | None = None) -> int:
        return self._pool.free_frames(None if node is None else numa.check_node(self._pool, node))

    def move_vcpus(self, vm: str, node: int) -> None:
        """Run the VM's vCPUs on ``node``; the frames its pages need from now on go there."""
        numa.move_vcpus(self._pool, self._vm(vm), node)

    def numa_pages(self, vm: str, node: int, *, hot_first: bool = True) -> Ints:
        """The pages a move of the VM's memory to ``node`` copies, in the order they go."""
        return numa.to_move(self._pool, self._vm(vm), node, hot_first=hot_first)

    def move_pages(self, vm: str, pages: PageSelection, node: int) -> int:
        """Copy those of ``pages`` that are resident, private and elsewhere onto frames on
        ``node``, and remap them (the guest's bytes do not change); return how many."""
        guest = self._vm(vm)
        return numa.move(self._pool, guest, guest.check_pages(pages), node)

    def whole_large_pages(self, vm: str) -> int:
        """How many of the VM's large pages are backed by one 2 MiB block each."""
        return numa.whole_large_pages(self._vm(vm))

    def local_share(self, vm: str, pages: PageSelection) -> float | None:
        """The share of accesses to ``pages`` that find their page on the vCPUs' node."""
        guest = self._vm(vm)
        return numa.local_share(self._pool, guest, guest.check_pages(pages))

    # Migration and checkpoints

    def export_pages(
        self, vm: str, pages: PageSelection | None = None, batch: int = 256
    ) -> Iterator[PageBatch]:
        guest = self._vm(vm)
        wanted = np.arange(guest.pages) if pages is None else pages
        return transfer.export(self._pool, self._swap, guest, guest.check_pages(wanted), batch)

    def export_dirty(self, vm: str, batch: int = 256) -> Iterator[PageBatch]:
        """The pages written since the last dirty or checkpoint export; clears the dirty bits."""
        self._vm(vm).require_bytes()
        transfer.check_batch(batch)
        return self.export_pages(vm, self.collect_dirty(vm), batch)

    def export_checkpoint(self, vm: str, batch: int = 256) -> Iterator[PageBatch]:
        """Every page, as the base later dirty exports apply to; clears the dirty bits."""
        self._vm(vm).require_bytes()
        transfer.check_batch(batch)
        self.collect_dirty(vm)
        return self.export_pages(vm, None, batch)

    def import_pages(self, vm: str, batch: PageBatch) -> None:
        if vm in self._templates:
            raise ReadOnly(vm)
        transfer.import_batch(self._pool, self._swap, self._vm(vm), batch)

    # Digests and accounting

    def checksum(self, vm: str) -> str:
        return digest.checksum(self._pool, self._swap, self._vm(vm))

    def page_digests(self, vm: str, pages: PageSelection | None = None) -> npt.NDArray[np.uint64]:
        """xxh3_64 of every page (or of ``pages``), in that order."""
        guest = self._vm(vm)
        wanted = None if pages is None else guest.check_pages(pages)
        return digest.page_digests(self._pool, self._swap, guest, wanted)

    def swap_usage(self) -> tuple[int, int]:
        """(blocks reserved, blocks in use): cheap enough for every tick."""
        return self._swap.reserved, self._swap.used

    def used_frames(self) -> int:
        return self._pool.used_frames()

    def usage(self) -> MemoryUsage:
        return usage.host_usage(self._pool, self._swap)

    def vm_usage(self, vm: str) -> VmUsage:
        return usage.vm_usage(self._pool, self._vm(vm))

    def page_table(self, vm: str) -> Ints:
        """The VM's page table, shape (large pages, 512): frame numbers, or ~block if swapped."""
        return readonly(self._vm(vm).table)

    def frame_mappers(self, frames: Ints) -> npt.NDArray[np.int32]:
        """How many guest pages map each of ``frames``."""
        return self._pool.refcount(np.asarray(frames, np.int64))

    def frame_refcounts(self) -> npt.NDArray[np.int32]:
        return readonly(self._pool.refs.every_frame())

    def swap_blocks_in_use(self) -> Ints:
        return self._swap.blocks_in_use()

    def _vm(self, vm: str) -> GuestMemory:
        try:
            return self._vms[vm]
        except KeyError:
            raise UnknownVm(vm) from None
