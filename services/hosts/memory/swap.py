"""A host's swap: a thick reservation of blocks that thin per-VM swap files draw on."""

from __future__ import annotations

import numpy as np

from services.hosts.memory.arena import PageArena, SlotAllocator, grown
from services.hosts.memory.errors import InvalidArgument, SwapFull
from services.hosts.memory.geometry import Ints, PageBytes


class SwapSpace:
    """``reserved`` 4 KiB blocks, fixed when the host starts and never exceeded.

    A VM's swap file is thin: it holds exactly the blocks its swapped-out pages point at, one
    block per page, taken from the shared reservation. Blocks of accounting-only guests are
    counted but get no bytes.
    """

    def __init__(self, reserved: int) -> None:
        if reserved < 0:
            raise InvalidArgument(f"a swap reservation cannot be {reserved} blocks")
        self.reserved = reserved
        self._blocks = SlotAllocator(reserved)
        self._arena = PageArena(1, reserved)
        self._row: Ints = np.zeros(0, np.int64)

    @property
    def data(self) -> PageBytes:
        """The bytes of swapped pages; index it with ``rows``. Re-read after ``take``."""
        return self._arena.data

    @property
    def free(self) -> int:
        return self._blocks.free

    @property
    def used(self) -> int:
        return self.reserved - self.free

    def take(self, count: int, *, backed: bool) -> Ints:
        if count > self.free:
            raise SwapFull(count, self.free, self.reserved)
        blocks, _ = self._blocks.take(count)
        self._row = grown(self._row, self._blocks.high_water, self.reserved, -1)
        if backed:
            self._row[blocks] = self._arena.acquire(count, zeroed=False)
        return blocks

    def give_back(self, blocks: Ints) -> None:
        rows = self._row[blocks]
        self._arena.release(rows[rows >= 0])
        self._row[blocks] = -1
        self._blocks.give_back(blocks)

    def rows(self, blocks: Ints) -> Ints:
        return self._row[blocks]

    def blocks_in_use(self) -> Ints:
        return self._blocks.in_use()
