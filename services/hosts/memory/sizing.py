"""A guest's used memory, and resizing a VM by whole 2 MiB large pages.

A guest's *used size*, in pages, is 1 + its highest page that is not all zeros (0 when every
page is zero): the shortest prefix of guest memory that holds all its data, so the smallest
size it can shrink to without losing a byte. For a full VM that is read from its bytes,
wherever they are (frames or swap). An accounting-only VM has no bytes, so its used size is
1 + the highest page that either its seeded content made non-zero (per its content layout,
over the pages it was created with) or a guest access has written since it was created. That
over-counts where a write stored zeros, never under-counts.
"""

from __future__ import annotations

import numpy as np

from services.hosts.memory.access import gather
from services.hosts.memory.errors import BelowUsedMemory, InvalidArgument
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, swap_block
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.swap import SwapSpace

_SCAN_PAGES = 8 * LARGE_PAGE_PAGES  # pages zero-tested at once: 16 MiB copied per step


def used_pages(pool: FramePool, swap: SwapSpace, guest: GuestMemory) -> int:
    """The guest's used size in pages (see the module docstring)."""
    if not guest.full:
        return max(guest.written_end, guest.content_end())
    # From the top down, a chunk at a time: the scan stops at the first chunk holding data.
    for stop in range(guest.pages, 0, -_SCAN_PAGES):
        start = max(0, stop - _SCAN_PAGES)
        pages = np.arange(start, stop, dtype=np.int64)
        words = gather(pool, swap, guest, pages).view(np.uint64)  # (pages, 512) words
        nonzero = np.flatnonzero(words.any(axis=1))
        if len(nonzero):
            return start + int(nonzero[-1]) + 1
    return 0


def resize(
    pool: FramePool,
    swap: SwapSpace,
    guest: GuestMemory,
    large_pages: int,
    *,
    keep_used: bool = True,
) -> None:
    """Give ``guest`` exactly ``large_pages`` large pages.

    Growing takes whole free large pages, placed over the nodes as ``create_vm`` places them,
    and maps them as zero pages. Shrinking drops the trailing large pages: one reference per
    dropped entry comes off its frame (a frame another page still maps stays in use) and the
    swap blocks of dropped swapped-out pages go back. With ``keep_used`` a shrink never cuts
    below the used size; without, it is a shrink already decided on other facts (the guest's
    working set, recorded in the log) and the trailing pages go whatever they hold. Checks
    come first: nothing changes when this raises.
    """
    if large_pages < 1:
        raise InvalidArgument(f"VM {guest.name!r} needs >= 1 large page, not {large_pages}")
    large_pages = int(large_pages)
    current = guest.spec.large_pages
    if large_pages > current:
        blocks = pool.allocate_large_pages(large_pages - current, backed=guest.full)
        guest.grow(blocks, pool.block_node[blocks])
    elif large_pages < current:
        used = used_pages(pool, swap, guest) if keep_used else 0
        if used > large_pages * LARGE_PAGE_PAGES:
            raise BelowUsedMemory(guest.name, large_pages, used)
        dropped = guest.shrink(large_pages)
        pool.release(dropped[dropped >= 0])
        swap.give_back(swap_block(dropped[dropped < 0]))
