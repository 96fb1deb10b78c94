"""Which guest pages hold which disk blocks: the host's record of its guests' page cache.

A guest's disk reads land in its memory (real bytes, in pages of its page cache). The host
remembers "page P holds block B of disk D" until the page is written, or the block is:
then the page is only bytes again. What a migration or a checkpoint may send instead of
a mapped page's bytes is the name of its block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.hosts.memory.geometry import Ints

_CACHE = 41  # seeds which pages a guest's reads land in


@dataclass
class VmPageCache:
    pages: int
    # Per guest page: the block it holds (-1: none) and its disk (an index in ``disks``).
    block: Ints = field(init=False)
    disk: Ints = field(init=False)
    disks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.block = np.full(self.pages, -1, np.int64)
        self.disk = np.full(self.pages, -1, np.int64)

    def landing(self, seed: int, step: int, count: int) -> Ints:
        """The pages ``count`` blocks read in ``step`` are read into (distinct, seeded)."""
        count = min(count, self.pages)
        rng = np.random.default_rng([_CACHE, seed, step])
        return np.sort(rng.choice(self.pages, count, replace=False)).astype(np.int64)

    def map(self, pages: Ints, disk: str, blocks: Ints) -> None:
        if disk not in self.disks:
            self.disks.append(disk)
        self.block[pages] = blocks
        self.disk[pages] = self.disks.index(disk)

    def map_each(self, pages: Ints, disks: list[str], blocks: Ints) -> None:
        """Pages that arrived as blocks (each of its own disk) hold those blocks here too."""
        for disk in dict.fromkeys(disks):
            rows = np.asarray([d == disk for d in disks], np.bool_)
            self.map(pages[rows], disk, blocks[rows])

    def pages_written(self, pages: Ints) -> None:
        self.block[pages] = -1
        self.disk[pages] = -1

    def blocks_written(self, disk: str, blocks: Ints) -> None:
        """Blocks written to ``disk``: the pages holding them hold only bytes now. A page
        read from a disk since frozen (a checkpoint's) still holds that disk's block."""
        if not len(blocks) or disk not in self.disks:
            return
        stale = np.isin(self.block, blocks) & (self.disk == self.disks.index(disk))
        self.block[stale] = -1
        self.disk[stale] = -1

    @property
    def mapped(self) -> int:
        return int(np.count_nonzero(self.block >= 0))

    def mapping(self) -> dict[int, tuple[str, int]]:
        """Every mapped page: (disk, block)."""
        held = np.flatnonzero(self.block >= 0)
        return {int(p): (self.disks[int(self.disk[p])], int(self.block[p])) for p in held.tolist()}


class PageCaches:
    """The page caches of this process's guests, by VM."""

    def __init__(self) -> None:
        self.vms: dict[str, VmPageCache] = {}

    def of(self, vm: str, pages: int) -> VmPageCache:
        cache = self.vms.get(vm)
        if cache is None or cache.pages != pages:
            cache = self.vms[vm] = VmPageCache(pages)
        return cache

    def forget(self, vm: str) -> None:
        """The guest's memory was made again (restored, recreated, moved): nothing mapped."""
        self.vms.pop(vm, None)

    def mapped(self, vm: str) -> int:
        cache = self.vms.get(vm)
        return 0 if cache is None else cache.mapped
