"""Copy-on-write frame sharing between guest pages with equal bytes."""

from __future__ import annotations

import numpy as np

from services.hosts.memory.errors import BytesDiffer, PageNotResident, SizeMismatch
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import LARGE_PAGE_SHIFT, Ints, Mask
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.paging import relocate

_COMPARE_CHUNK = 1024  # pages compared at once: bounds the temporary copies to 4 MiB a side


def share(pool: FramePool, a: GuestMemory, pages_a: Ints, b: GuestMemory, pages_b: Ints) -> int:
    """Point page ``pages_b[i]`` of ``b`` at the frame of page ``pages_a[i]`` of ``a``, for every
    i; return how many frames that freed. Nothing changes unless every pair is resident and
    equal byte for byte."""
    a.require_bytes()
    b.require_bytes()
    if len(pages_a) != len(pages_b):
        raise SizeMismatch(f"{len(pages_a)} pages of {a.name!r} for {len(pages_b)} of {b.name!r}")
    for guest, pages in ((a, pages_a), (b, pages_b)):
        swapped = guest.flat[pages] < 0
        if swapped.any():
            raise PageNotResident(guest.name, int(pages[swapped][0]))
    differ = np.flatnonzero(_differing(pool, a.flat[pages_a], b.flat[pages_b]))
    if len(differ):
        first = differ[0]
        raise BytesDiffer(a.name, int(pages_a[first]), b.name, int(pages_b[first]), len(differ))
    # Pairs apply in order (a pair may use a page an earlier pair changed); since equal bytes
    # stay equal, every pair still holds once the earlier ones are applied.
    kept: list[int] = []
    dropped: list[int] = []
    for page_a, page_b in zip(pages_a.tolist(), pages_b.tolist(), strict=True):
        frame_a, frame_b = int(a.flat[page_a]), int(b.flat[page_b])
        if frame_a != frame_b:
            b.flat[page_b] = frame_a
            kept.append(frame_a)
            dropped.append(frame_b)
    pool.retain(np.asarray(kept, np.int64))
    return pool.release(np.asarray(dropped, np.int64))


def make_private(pool: FramePool, guest: GuestMemory, pages: Ints, node: int | None = None) -> int:
    """Leave each of ``pages`` that is resident on its own frame, copying shared frames (onto
    ``node``, or the page's home node); return how many pages were copied."""
    pages = copies_needed(pool, guest, pages)
    nodes = guest.home_of(pages) if node is None else np.full(len(pages), node, np.int64)
    relocate(pool, guest, pages, nodes)
    return len(pages)


def reads_of_shared(pool: FramePool, guest: GuestMemory, reads: Ints) -> tuple[Ints, Ints, Ints]:
    """Of the pages ``reads`` lists (one entry a read), those on a shared frame: each page
    once, how often it was read, and the NUMA node of its frame."""
    pages, counts = np.unique(reads, return_counts=True)
    entries = guest.flat[pages]
    mask = shared(pool, entries)
    frames = entries[mask]
    return pages[mask], counts[mask].astype(np.int64), pool.block_node[frames >> LARGE_PAGE_SHIFT]


def copies_needed(pool: FramePool, guest: GuestMemory, pages: Ints) -> Ints:
    """Which of ``pages`` need a copy to be private: those on a shared frame, except one page
    per frame when all the frame's mappers are among ``pages`` (that page keeps the frame)."""
    pages = np.unique(pages)
    pages = pages[shared(pool, guest.flat[pages])]
    frames, first, mappers = np.unique(guest.flat[pages], return_index=True, return_counts=True)
    return np.delete(pages, first[mappers == pool.refcount(frames)])


def shared(pool: FramePool, entries: Ints) -> Mask:
    """Which page-table entries point at a frame other entries also point at."""
    resident = entries >= 0
    return resident & (pool.refcount(np.where(resident, entries, 0)) > 1)


def _differing(pool: FramePool, frames_a: Ints, frames_b: Ints) -> Mask:
    differ = np.zeros(len(frames_a), np.bool_)
    for start in range(0, len(frames_a), _COMPARE_CHUNK):
        window = slice(start, start + _COMPARE_CHUNK)
        left = pool.data[pool.rows(frames_a[window])]
        right = pool.data[pool.rows(frames_b[window])]
        differ[window] = (left != right).any(axis=1)
    return differ
