"""Each frame's reference count, kept per large page until a page's frames differ.

Guests get whole large pages, so almost every block's 512 frames share one count (0 or 1).
Such a block costs one integer; a block gets a row of 512 counts only when one of its frames
is counted on its own (sharing, a copy-on-write break, a swap-in), and loses it when it is
free again. A host of accounting-only VMs therefore keeps no per-frame array at all.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.hosts.memory.arena import SlotAllocator
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, LARGE_PAGE_SHIFT, Ints

Counts = npt.NDArray[np.int32]

_SLOT_MASK = LARGE_PAGE_PAGES - 1


class RefCounts:
    def __init__(self, blocks: int) -> None:
        # A block without a row has every frame at ``whole[block]``; a block with one keeps
        # ``whole`` at 0, so sums over both arrays count each frame once.
        self.whole: Counts = np.zeros(blocks, np.int32)
        self._row: Ints = np.full(blocks, -1, np.int64)
        self._slots = SlotAllocator(blocks)
        self._rows: Counts = np.zeros((0, LARGE_PAGE_PAGES), np.int32)

    def of(self, frames: Ints) -> Counts:
        blocks = frames >> LARGE_PAGE_SHIFT
        counts: Counts = self.whole[blocks]
        rows = self._row[blocks]
        own = rows >= 0
        counts[own] = self._rows[rows[own], frames[own] & _SLOT_MASK]
        return counts

    def block(self, block: int) -> Counts:
        row = int(self._row[block])
        if row < 0:
            return np.full(LARGE_PAGE_PAGES, self.whole[block], np.int32)
        counts: Counts = self._rows[row].copy()
        return counts

    def counted_alone(self, blocks: Ints) -> npt.NDArray[np.bool_]:
        """Which of ``blocks`` keep a count per frame."""
        alone: npt.NDArray[np.bool_] = self._row[blocks] >= 0
        return alone

    def set_blocks(self, blocks: Ints, count: int) -> None:
        """Every frame of ``blocks`` to ``count``, their rows dropped."""
        rows = self._row[blocks]
        dropped = rows[rows >= 0]
        self._rows[dropped] = 0
        self._slots.give_back(dropped)
        self._row[blocks] = -1
        self.whole[blocks] = count

    def add(self, frames: Ints, deltas: Ints) -> None:
        """Add ``deltas[i]`` to frame ``frames[i]``; ``frames`` sorted and distinct."""
        if not len(frames):
            return
        blocks = frames >> LARGE_PAGE_SHIFT
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        touched = blocks[starts]
        sizes = np.diff(np.r_[starts, len(frames)])
        low = np.minimum.reduceat(deltas, starts)
        high = np.maximum.reduceat(deltas, starts)
        whole = (self._row[touched] < 0) & (sizes == LARGE_PAGE_PAGES) & (low == high)
        self.whole[touched[whole]] += low[whole].astype(np.int32)
        self._materialise(touched[~whole])
        alone = ~np.repeat(whole, sizes)
        frames, deltas = frames[alone], deltas[alone]
        self._rows[self._row[frames >> LARGE_PAGE_SHIFT], frames & _SLOT_MASK] += deltas.astype(
            np.int32
        )

    def total(self) -> int:
        return int(self.whole.sum(dtype=np.int64)) * LARGE_PAGE_PAGES + int(
            self._rows.sum(dtype=np.int64)
        )

    def above(self, count: int) -> int:
        """How many frames have a count above ``count``."""
        return int(np.count_nonzero(self.whole > count)) * LARGE_PAGE_PAGES + int(
            np.count_nonzero(self._rows > count)
        )

    def every_frame(self) -> Counts:
        counts: Counts = np.repeat(self.whole, LARGE_PAGE_PAGES)
        for block in np.flatnonzero(self._row >= 0).tolist():
            start = block * LARGE_PAGE_PAGES
            counts[start : start + LARGE_PAGE_PAGES] = self._rows[self._row[block]]
        return counts

    def _materialise(self, blocks: Ints) -> None:
        blocks = blocks[self._row[blocks] < 0]
        if not len(blocks):
            return
        slots, _ = self._slots.take(len(blocks))
        if self._slots.high_water > len(self._rows):
            size = min(max(self._slots.high_water, 2 * len(self._rows)), self._slots.limit)
            bigger = np.zeros((size, LARGE_PAGE_PAGES), np.int32)
            bigger[: len(self._rows)] = self._rows
            self._rows = bigger
        self._rows[slots] = self.whole[blocks][:, None]
        self._row[blocks] = slots
        self.whole[blocks] = 0
