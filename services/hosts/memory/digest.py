"""Digests of guest memory: one xxh3_128 per VM, one xxh3_64 per page."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import xxhash

from services.hosts.memory.access import gather
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import (
    LARGE_PAGE_PAGES,
    LARGE_PAGE_SIZE,
    PAGE_SIZE,
    Ints,
    PageBytes,
    swap_block,
)
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.swap import SwapSpace


def checksum(pool: FramePool, swap: SwapSpace, guest: GuestMemory) -> str:
    """xxh3_128 (hex) of the guest's pages in guest order, wherever they are."""
    guest.require_bytes()
    table = guest.table
    resident = (table >= 0).all(axis=1)
    rows = pool.rows(np.where(table >= 0, table, 0))
    # A large page still on one block, in order, is hashed in place with a single call.
    in_place = resident & (np.diff(rows, axis=1) == 1).all(axis=1)
    memory = pool.data.reshape(-1).data
    hasher = xxhash.xxh3_128()
    for large_page, whole in enumerate(in_place.tolist()):
        if whole:
            start = int(rows[large_page, 0]) * PAGE_SIZE
            hasher.update(memory[start : start + LARGE_PAGE_SIZE])
        else:
            first = large_page * LARGE_PAGE_PAGES
            pages = np.arange(first, first + LARGE_PAGE_PAGES, dtype=np.int64)
            hasher.update(gather(pool, swap, guest, pages).reshape(-1).data)
    return str(hasher.hexdigest())


def page_digests(
    pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints | None = None
) -> npt.NDArray[np.uint64]:
    """xxh3_64 of every guest page (or of ``pages``), in that order."""
    guest.require_bytes()
    entries = guest.flat if pages is None else guest.flat[pages]
    resident = entries >= 0
    if resident.all():
        return digest_rows(pool.data, pool.rows(entries))
    digests = np.empty(len(entries), np.uint64)
    digests[resident] = digest_rows(pool.data, pool.rows(entries[resident]))
    digests[~resident] = digest_rows(swap.data, swap.rows(swap_block(entries[~resident])))
    return digests


def digest_rows(data: PageBytes, rows: Ints) -> npt.NDArray[np.uint64]:
    """xxh3_64 of the listed rows of ``data``: one hash call per page, on a memoryview slice."""
    memory = data.reshape(-1).data
    digest = xxhash.xxh3_64_intdigest
    starts = (rows * PAGE_SIZE).tolist()
    return np.fromiter(
        (digest(memory[start : start + PAGE_SIZE]) for start in starts), np.uint64, len(rows)
    )
