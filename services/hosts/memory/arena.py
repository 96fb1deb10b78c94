"""Id allocation and page-byte storage that grow only as far as they are used.

A host's frame and swap numbers cover its whole capacity, but only full-mode guests need bytes,
so bytes live in a ``PageArena`` whose rows are handed out on demand. Keeping them in one
contiguous array lets the hot paths (digests, checksums, copies) address any page with one
vectorised row index.
"""

from __future__ import annotations

import numpy as np

from services.hosts.memory.geometry import PAGE_SIZE, Ints, PageBytes


def grown(array: Ints, size: int, limit: int, fill: int) -> Ints:
    """``array`` extended to hold ``size`` entries (doubling, at most ``limit``), new entries
    set to ``fill``."""
    if len(array) >= size:
        return array
    bigger = np.full(min(max(size, 2 * len(array)), limit), fill, dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger


class SlotAllocator:
    """Integer ids below a limit: the last ids given back are reused first, then fresh ones.

    Memory is proportional to the ids ever used, not to the limit, so a large reservation costs
    nothing until it is drawn on.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._fresh = 0  # ids below this have been handed out at least once
        self._returned: list[int] = []

    @property
    def free(self) -> int:
        return self.limit - self._fresh + len(self._returned)

    @property
    def high_water(self) -> int:
        return self._fresh

    def take(self, count: int) -> tuple[Ints, int]:
        """``count`` ids and how many of them (at the front) are reused; the caller checks
        ``free`` first."""
        assert count <= self.free, f"{count} ids taken with {self.free} free"
        reused = min(count, len(self._returned))
        ids = self._returned[len(self._returned) - reused :][::-1]
        del self._returned[len(self._returned) - reused :]
        fresh = np.arange(self._fresh, self._fresh + count - reused, dtype=np.int64)
        self._fresh += count - reused
        return np.concatenate([np.asarray(ids, dtype=np.int64), fresh]), reused

    def give_back(self, ids: Ints) -> None:
        self._returned.extend(ids.tolist())

    def in_use(self) -> Ints:
        return np.setdiff1d(np.arange(self._fresh, dtype=np.int64), self._returned)


class PageArena:
    """Page bytes in slots of ``slot_pages`` contiguous rows, grown geometrically on demand."""

    def __init__(self, slot_pages: int, max_slots: int) -> None:
        self.slot_pages = slot_pages
        self._slots = SlotAllocator(max_slots)
        self.data: PageBytes = np.zeros((0, PAGE_SIZE), dtype=np.uint8)

    def acquire(self, count: int, *, zeroed: bool) -> Ints:
        """``count`` slots; with ``zeroed``, reused slots are cleared (fresh ones are zero)."""
        slots, reused = self._slots.take(count)
        needed = self._slots.high_water * self.slot_pages
        if needed > len(self.data):
            cap = self._slots.limit * self.slot_pages
            bigger = np.zeros((min(max(needed, 2 * len(self.data)), cap), PAGE_SIZE), np.uint8)
            bigger[: len(self.data)] = self.data
            self.data = bigger
        if zeroed:
            for slot in slots[:reused].tolist():
                self.data[slot * self.slot_pages : (slot + 1) * self.slot_pages] = 0
        return slots

    def release(self, slots: Ints) -> None:
        self._slots.give_back(slots)
