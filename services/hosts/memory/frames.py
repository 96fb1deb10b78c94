"""A host's physical frames: NUMA nodes, reference counts, free lists and backing bytes.

Frames are numbered node by node, so frame ``f`` lies in large page (block) ``f >> 9`` and the
block's node is fixed. Guests get whole blocks; single frames (copy-on-write breaks, swap-ins)
come from partly used blocks first, then from a free block, preferring the requested node.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.hosts.memory.arena import PageArena
from services.hosts.memory.errors import InvalidArgument, OutOfFrames
from services.hosts.memory.geometry import (
    LARGE_PAGE_PAGES,
    LARGE_PAGE_SHIFT,
    Ints,
    PageBytes,
    block_rows,
    whole_rows,
)
from services.hosts.memory.refcounts import Counts, RefCounts

_SLOT_MASK = LARGE_PAGE_PAGES - 1


class FramePool:
    def __init__(self, large_pages_per_node: Sequence[int]) -> None:
        counts = list(large_pages_per_node)
        if not counts or min(counts) < 0 or sum(counts) == 0:
            raise InvalidArgument(f"a host needs NUMA nodes with large pages, not {counts}")
        self.nodes = len(counts)
        self.total_large_pages = sum(counts)
        self.total_frames = self.total_large_pages * LARGE_PAGE_PAGES
        self.block_node: Ints = np.repeat(np.arange(self.nodes, dtype=np.int64), counts)
        self.refs = RefCounts(self.total_large_pages)
        self._block_used: npt.NDArray[np.int32] = np.zeros(self.total_large_pages, np.int32)
        starts = np.cumsum([0, *counts]).tolist()
        # Per node: whole free blocks (a heap, lowest first) and partly used blocks (in order).
        self._free_blocks = [list(range(starts[n], starts[n + 1])) for n in range(self.nodes)]
        self._partial: list[dict[int, None]] = [{} for _ in range(self.nodes)]
        self._node_free: Ints = np.asarray(counts, np.int64) * LARGE_PAGE_PAGES
        self._slot: Ints = np.full(self.total_large_pages, -1, np.int64)
        self._arena = PageArena(LARGE_PAGE_PAGES, self.total_large_pages)

    @property
    def data(self) -> PageBytes:
        """The bytes of backed frames; index it with ``rows``. Re-read after any allocation."""
        return self._arena.data

    def free_frames(self, node: int | None = None) -> int:
        return int(self._node_free.sum() if node is None else self._node_free[node])

    def used_frames(self, node: int | None = None) -> int:
        total = self.total_frames if node is None else self.node_frames(node)
        return total - self.free_frames(node)

    def node_frames(self, node: int) -> int:
        return int(np.count_nonzero(self.block_node == node)) * LARGE_PAGE_PAGES

    def free_large_pages(self, node: int) -> int:
        return len(self._free_blocks[node])

    def rows(self, frames: Ints) -> Ints:
        """Rows of ``data`` holding ``frames`` (which must be in backed blocks)."""
        slots: Ints = self._slot[frames >> LARGE_PAGE_SHIFT]
        return slots * LARGE_PAGE_PAGES + (frames & _SLOT_MASK)

    def block_bytes(self, block: int) -> PageBytes:
        """A writable view of one backed block's 512 frames."""
        start = int(self._slot[block]) * LARGE_PAGE_PAGES
        return self.data[start : start + LARGE_PAGE_PAGES]

    def require_free(self, frames: int) -> None:
        if frames > self.free_frames():
            raise OutOfFrames(frames, self.free_frames(), "frames")

    def allocate_large_pages(self, count: int, *, backed: bool) -> Ints:
        """``count`` whole blocks, interleaved over the nodes: block i goes to node
        (start + i) mod N, where start is the node with the most free blocks; full nodes are
        skipped."""
        free = [len(heap) for heap in self._free_blocks]
        if count > sum(free):
            raise OutOfFrames(count, sum(free), "whole large pages")
        node = int(np.argmax(free))
        blocks: list[int] = []
        for _ in range(count):
            while not self._free_blocks[node]:
                node = (node + 1) % self.nodes
            blocks.append(heapq.heappop(self._free_blocks[node]))
            node = (node + 1) % self.nodes
        taken = np.asarray(blocks, np.int64)
        self.refs.set_blocks(taken, 1)
        self._block_used[taken] = LARGE_PAGE_PAGES
        np.subtract.at(self._node_free, self.block_node[taken], LARGE_PAGE_PAGES)
        if backed:
            self._back(taken)
        return taken

    def allocate_frames(self, nodes: Ints, *, backed: bool) -> Ints:
        """One frame per entry of ``nodes``, on that node if it has room, else on the next."""
        self.require_free(len(nodes))
        frames = np.empty(len(nodes), np.int64)
        for node in np.unique(nodes).tolist():
            wanted = np.flatnonzero(nodes == node)
            frames[wanted] = self._take(node, len(wanted), backed=backed)
        return frames

    def refcount(self, frames: Ints) -> Counts:
        return self.refs.of(frames)

    def retain(self, frames: Ints) -> None:
        unique, counts = np.unique(frames, return_counts=True)
        self.refs.add(unique, counts)

    def release(self, frames: Ints) -> int:
        """Drop one reference per entry of ``frames``; return how many frames became free."""
        if not len(frames):
            return 0
        unique, counts = np.unique(frames, return_counts=True)
        self.refs.add(unique, -counts)
        freed = unique[self.refs.of(unique) == 0]
        blocks, per_block = np.unique(freed >> LARGE_PAGE_SHIFT, return_counts=True)
        self._free(blocks, per_block)
        return len(freed)

    def retain_table(self, table: Ints) -> None:
        """One more reference to every frame a page table (rows of 512) maps (swapped
        entries are left alone); a row that is one whole block in order costs one count,
        not 512."""
        whole = whole_rows(table)
        blocks = table[whole, 0] >> LARGE_PAGE_SHIFT
        alone = self.refs.counted_alone(blocks)
        self.refs.whole[blocks[~alone]] += 1
        rest = table[~whole].reshape(-1)
        self.retain(np.concatenate([rest[rest >= 0], block_rows(blocks[alone]).reshape(-1)]))

    def release_table(self, table: Ints) -> int:
        """``release`` of every frame a page table maps (swapped entries are left alone)."""
        whole = whole_rows(table)
        rest = table[~whole].reshape(-1)
        return self.release_blocks(table[whole, 0] >> LARGE_PAGE_SHIFT) + self.release(
            rest[rest >= 0]
        )

    def release_blocks(self, blocks: Ints) -> int:
        """``release`` of every frame of the whole large pages ``blocks``, without an array of
        their frames."""
        alone = self.refs.counted_alone(blocks)
        freed = self.release(block_rows(blocks[alone]).reshape(-1))
        blocks = blocks[~alone]
        self.refs.whole[blocks] -= 1
        emptied = blocks[self.refs.whole[blocks] == 0]
        self._free(emptied, np.full(len(emptied), LARGE_PAGE_PAGES, np.int64))
        return freed + len(emptied) * LARGE_PAGE_PAGES

    def _free(self, blocks: Ints, per_block: Ints) -> None:
        self._block_used[blocks] -= per_block.astype(np.int32)
        np.add.at(self._node_free, self.block_node[blocks], per_block)
        for block in blocks.tolist():
            self._file(block)

    def _take(self, first_node: int, count: int, *, backed: bool) -> Ints:
        taken: list[Ints] = []
        for step in range(self.nodes):
            node = (first_node + step) % self.nodes
            while count and (self._partial[node] or self._free_blocks[node]):
                if self._partial[node]:
                    block = next(iter(self._partial[node]))
                else:
                    block = heapq.heappop(self._free_blocks[node])
                base = block * LARGE_PAGE_PAGES
                idle = np.flatnonzero(self.refs.block(block) == 0)
                frames = base + idle[:count].astype(np.int64)
                self.refs.add(frames, np.ones(len(frames), np.int64))
                self._block_used[block] += len(frames)
                self._node_free[node] -= len(frames)
                count -= len(frames)
                self._file(block)
                if backed and self._slot[block] < 0:
                    self._back(np.asarray([block], np.int64))
                taken.append(frames)
        return np.concatenate(taken)

    def _file(self, block: int) -> None:
        """Put ``block`` on the list its use count calls for."""
        node = int(self.block_node[block])
        used = int(self._block_used[block])
        if used == LARGE_PAGE_PAGES:
            self._partial[node].pop(block, None)
        elif used:
            self._partial[node][block] = None
        else:
            self._partial[node].pop(block, None)
            heapq.heappush(self._free_blocks[node], block)
            self.refs.set_blocks(np.asarray([block], np.int64), 0)
            if self._slot[block] >= 0:
                self._arena.release(self._slot[block : block + 1])
                self._slot[block] = -1

    def _back(self, blocks: Ints) -> None:
        unbacked = blocks[self._slot[blocks] < 0]
        self._slot[unbacked] = self._arena.acquire(len(unbacked), zeroed=True)
