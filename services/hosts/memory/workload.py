"""Seeded guest workloads: which pages a guest writes and reads in one step.

Most accesses land in a hot set: ``hot_fraction`` of the guest's pages, scattered over its
memory by a fixed stride permutation, receives ``hot_share`` of the accesses. A step's
accesses depend only on the seed, the step number and the guest size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from services.hosts.memory.errors import InvalidArgument, SizeMismatch
from services.hosts.memory.geometry import PAGE_SIZE, Ints, PageBytes, readonly

_HOT_STRIDE = 1_000_003  # a prime: j -> (j * stride + offset) mod pages is a permutation
_HOT, _STEP = 11, 12


@dataclass(frozen=True, slots=True, eq=False)
class Accesses:
    """One batch of guest accesses. Write i puts ``write_data[i]`` at ``write_offsets[i]`` of
    ``write_pages[i]``; writes apply in order."""

    write_pages: Ints
    write_offsets: Ints
    write_data: PageBytes  # shape (writes, width): every write in a batch has one width
    read_pages: Ints

    def __post_init__(self) -> None:
        writes = len(self.write_pages)
        if len(self.write_offsets) != writes or self.write_data.shape[0] != writes:
            raise SizeMismatch(
                f"{writes} write pages, {len(self.write_offsets)} offsets and "
                f"{self.write_data.shape[0]} data rows"
            )
        width = self.write_data.shape[1]
        if writes and (
            self.write_offsets.min() < 0 or self.write_offsets.max() + width > PAGE_SIZE
        ):
            raise SizeMismatch(f"a {width}-byte write at those offsets overruns a page")

    @classmethod
    def write(cls, page: int, data: bytes, offset: int = 0) -> Accesses:
        row = np.frombuffer(data, np.uint8).reshape(1, len(data))
        return cls(_ints([page]), _ints([offset]), readonly(row), _ints([]))

    @classmethod
    def whole_pages(cls, pages: Ints, contents: PageBytes) -> Accesses:
        """``contents`` written over whole pages (a disk read landing in the page cache)."""
        written = np.asarray(pages, np.int64)
        return cls(written, np.zeros(len(written), np.int64), readonly(contents), _ints([]))

    @classmethod
    def read(cls, pages: Ints) -> Accesses:
        return cls(_ints([]), _ints([]), np.zeros((0, 0), np.uint8), pages)


@dataclass(frozen=True, slots=True)
class Workload:
    seed: int
    hot_fraction: float = 0.1
    hot_share: float = 0.9
    write_width: int = 64  # bytes changed per write: one cache line

    def __post_init__(self) -> None:
        if self.seed < 0 or not 0 < self.hot_fraction <= 1 or not 0 <= self.hot_share <= 1:
            raise InvalidArgument(f"not a workload: {self}")
        if not 1 <= self.write_width <= PAGE_SIZE:
            raise InvalidArgument(f"a write changes 1..{PAGE_SIZE} bytes, not {self.write_width}")

    def hot_pages(self, pages: int) -> Ints:
        """The hot set of a guest of ``pages`` pages."""
        return self._hot(np.arange(self._hot_count(pages), dtype=np.int64), pages)

    def step(
        self, pages: int, step: int, *, writes: int, reads: int, entropy: int | None = None
    ) -> Accesses:
        """The accesses of step ``step`` on a guest of ``pages`` pages; ``entropy`` (a
        recorded guest's state digest) makes them depend on what the guest was given too."""
        extra = [] if entropy is None else [entropy]
        rng = np.random.default_rng([_STEP, self.seed, step, *extra])
        write_pages = self._pick(rng, pages, writes)
        slots = PAGE_SIZE // self.write_width
        offsets = rng.integers(0, slots, writes, dtype=np.int64) * self.write_width
        data = rng.integers(0, 256, (writes, self.write_width), dtype=np.uint8)
        return Accesses(write_pages, offsets, data, self._pick(rng, pages, reads))

    def _pick(self, rng: np.random.Generator, pages: int, count: int) -> Ints:
        hot = rng.random(count) < self.hot_share
        anywhere = rng.integers(0, pages, count, dtype=np.int64)
        in_hot = self._hot(rng.integers(0, self._hot_count(pages), count, dtype=np.int64), pages)
        return np.where(hot, in_hot, anywhere)

    def _hot_count(self, pages: int) -> int:
        return max(1, math.ceil(self.hot_fraction * pages))

    def _hot(self, index: Ints, pages: int) -> Ints:
        stride = _HOT_STRIDE
        while math.gcd(stride, pages) != 1:
            stride += 2
        offset = int(np.random.default_rng([_HOT, self.seed]).integers(pages))
        return (index * stride + offset) % pages


def _ints(values: list[int]) -> Ints:
    return np.asarray(values, dtype=np.int64)
