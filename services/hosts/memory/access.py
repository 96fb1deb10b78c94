"""Guest reads and writes against frames and swap."""

from __future__ import annotations

import numpy as np

from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import PAGE_SIZE, Ints, PageBytes, swap_block
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.paging import swap_in
from services.hosts.memory.sharing import copies_needed, make_private
from services.hosts.memory.swap import SwapSpace
from services.hosts.memory.workload import Accesses


def gather(pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints) -> PageBytes:
    """A copy of ``pages``' bytes, from frames or swap blocks, one row per page."""
    entries = guest.flat[pages]
    resident = entries >= 0
    out = np.empty((len(pages), PAGE_SIZE), np.uint8)
    if resident.all():
        _copy_rows(out, pool.data, pool.rows(entries))
        return out
    out[resident] = pool.data[pool.rows(entries[resident])]
    out[~resident] = swap.data[swap.rows(swap_block(entries[~resident]))]
    return out


# Runs per row beyond which fancy indexing beats copying run by run.
_RUNS_PER_ROW = 1 / 32


def _copy_rows(out: PageBytes, data: PageBytes, rows: Ints) -> None:
    """``out[i] = data[rows[i]]``, a run of consecutive rows at a time when there are
    runs (a large page's frames lie in order): one copy, not a gather and a scatter."""
    if not len(rows):
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(breaks) + 1 > len(rows) * _RUNS_PER_ROW:
        out[:] = data[rows]
        return
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), len(rows)]
    for start, end in zip(starts, ends, strict=True):
        first = int(rows[start])
        out[start:end] = data[first : first + end - start]


def store(
    pool: FramePool,
    swap: SwapSpace,
    guest: GuestMemory,
    pages: Ints,
    offsets: Ints,
    data: PageBytes,
) -> int:
    """Write ``data[i]`` at ``offsets[i]`` of ``pages[i]``, in order, swapping pages in and
    breaking sharing first; return how many shared pages that copied. Raises
    ``OutOfFrames`` before any change when that needs more frames than are free."""
    swapped = np.count_nonzero(guest.flat[np.unique(pages)] < 0)
    pool.require_free(int(swapped) + len(copies_needed(pool, guest, pages)))
    swap_in(pool, swap, guest, pages)
    copied = make_private(pool, guest, pages)
    if not guest.full or not data.size:
        return copied
    rows = pool.rows(guest.flat[pages])
    # A page's n-th write goes in round n: no round writes a byte twice, so rounds apply in
    # order where one fancy assignment with repeated indices would not promise to.
    for batch in _rounds(pages):
        if data.shape[1] == PAGE_SIZE:
            pool.data[rows[batch]] = data[batch]
        else:
            columns = offsets[batch, None] + np.arange(data.shape[1])
            pool.data[rows[batch, None], columns] = data[batch]
    return copied


def _rounds(pages: Ints) -> list[Ints]:
    """Indices of ``pages`` grouped by occurrence: each page's first write, second, ..."""
    order = np.argsort(pages, kind="stable")
    ordered = pages[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rank = np.arange(len(pages)) - np.repeat(starts, np.diff(np.r_[starts, len(pages)]))
    return [order[rank == n] for n in range(int(rank.max(initial=-1)) + 1)]


def apply(pool: FramePool, swap: SwapSpace, guest: GuestMemory, accesses: Accesses) -> int:
    """Apply guest accesses: writes change bytes and set dirty bits, reads count; both heat
    their pages. Reads do not bring swapped pages back; writes do. Returns how many shared
    pages the writes copied (copy-on-write)."""
    writes = guest.check_pages(accesses.write_pages)
    reads = guest.check_pages(accesses.read_pages)
    copied = store(pool, swap, guest, writes, accesses.write_offsets, accesses.write_data)
    guest.dirty[writes] = True
    guest.written_end = max(guest.written_end, int(writes.max(initial=-1)) + 1)
    np.add.at(guest.reads, reads, 1)
    np.add.at(guest.heat, np.concatenate([writes, reads]), 1.0)
    return copied
