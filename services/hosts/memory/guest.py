"""One VM's memory as the host sees it: its spec, page table and access bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from services.hosts.memory.content import (
    DEFAULT_PROFILE,
    EMPTY_PROFILE,
    ContentProfile,
    PageKind,
    content_layout,
)
from services.hosts.memory.errors import AccountingOnly, InvalidArgument, PageOutOfRange
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, Ints, block_rows

PageSelection = int | Sequence[int] | npt.NDArray[np.integer]


class MemoryMode(StrEnum):
    FULL = "full"  # real bytes: checksums, sharing, migration byte for byte
    ACCOUNTING = "accounting"  # frames, swap and counters without bytes, for scale runs


@dataclass(frozen=True, slots=True)
class VmSpec:
    name: str
    large_pages: int
    seed: int = 0
    template: str = "generic"
    profile: ContentProfile = DEFAULT_PROFILE
    mode: MemoryMode = MemoryMode.FULL

    def __post_init__(self) -> None:
        if self.large_pages < 1 or self.seed < 0:
            raise InvalidArgument(
                f"VM {self.name!r} needs >= 1 large page and a seed >= 0, "
                f"not {self.large_pages} and {self.seed}"
            )

    @classmethod
    def empty(cls, name: str, large_pages: int, mode: MemoryMode = MemoryMode.FULL) -> VmSpec:
        """A zero-filled VM, e.g. the destination of a migration or a checkpoint restore."""
        return cls(name, large_pages, profile=EMPTY_PROFILE, mode=mode)

    @property
    def pages(self) -> int:
        return self.large_pages * LARGE_PAGE_PAGES


class GuestMemory:
    """A two-level page table and per-page dirty bits, read counts and heat.

    ``table[large_page, slot]`` is the entry of guest page ``large_page * 512 + slot`` (see
    ``geometry`` for the encoding): a lookup is one index, whatever the guest's size, and a
    row is one 2 MiB large page. ``home[large_page]`` is the NUMA node the large page was
    placed on; frames the page needs later are taken there first. A resize adds or drops
    whole rows (``grow``, ``shrink``); the arrays are replaced, so views taken before it
    keep the old size. ``vcpu_node`` is the node its vCPUs run on: at first the one that
    holds most of its large pages (the lowest of those that tie).
    """

    # Made on first use (``__getattr__``): a guest nothing has looked into yet costs no
    # page-sized arrays, so creating many VMs is cheap until their pages are used.
    table: Ints
    flat: Ints  # the same entries as ``table``, by guest page number
    dirty: npt.NDArray[np.bool_]
    reads: npt.NDArray[np.uint32]
    heat: npt.NDArray[np.float32]

    def __init__(self, spec: VmSpec, blocks: Ints, home: Ints) -> None:
        self.spec = spec
        self._blocks: Ints | None = blocks
        self.home = home
        self.vcpu_node = int(np.bincount(home).argmax())
        # What an accounting-only guest's used size is made of (it has no bytes to test):
        # 1 + the highest page ever written, and the pages its seeded content filled.
        self.written_end = 0
        self._content_pages = spec.pages
        self._content_end: int | None = None

    @classmethod
    def mapping(cls, spec: VmSpec, table: Ints, home: Ints, vcpu_node: int) -> GuestMemory:
        """A guest whose pages map the frames of ``table`` (a fork's), its bits clear."""
        guest = cls(spec, np.zeros(0, np.int64), home)
        guest._blocks = None
        guest.table = table
        guest.flat = table.reshape(-1)
        guest.dirty = np.zeros(spec.pages, np.bool_)
        guest.reads = np.zeros(spec.pages, np.uint32)
        guest.heat = np.zeros(spec.pages, np.float32)
        guest.vcpu_node = vcpu_node
        return guest

    def __getattr__(self, name: str) -> object:
        blocks: Ints | None = self.__dict__.get("_blocks")
        if name not in _LAZY or blocks is None:
            raise AttributeError(name)
        self._blocks = None
        pages = self.spec.pages
        self.table = block_rows(blocks)
        self.flat = self.table.reshape(-1)
        self.dirty = np.zeros(pages, np.bool_)
        self.reads = np.zeros(pages, np.uint32)
        self.heat = np.zeros(pages, np.float32)
        return self.__dict__[name]

    @property
    def untouched(self) -> bool:
        """Nothing has looked at its pages yet: every bit and count is still zero."""
        return self._blocks is not None

    @property
    def untouched_blocks(self) -> Ints | None:
        """The large pages of a guest nothing has looked into yet (``None`` once touched)."""
        return self._blocks

    def content_end(self) -> int:
        """1 + the highest page whose seeded content is not a zero page (0 if none).

        Pages added by a resize start as zero pages, so only the pages the guest was created
        with count, and a shrink never cuts below this (it is part of the used size)."""
        if self._content_end is None:
            kinds = content_layout(self.spec.seed, self.spec.profile, self._content_pages).kinds
            filled = np.flatnonzero(kinds != PageKind.ZERO)
            self._content_end = int(filled[-1]) + 1 if len(filled) else 0
        return self._content_end

    def grow(self, blocks: Ints, home: Ints) -> None:
        """Append the whole large pages ``blocks`` (placed on nodes ``home``) as new rows."""
        added = len(blocks) * LARGE_PAGE_PAGES
        self.table = np.concatenate([self.table, block_rows(blocks)])
        self.flat = self.table.reshape(-1)
        self.home = np.concatenate([self.home, home])
        self.dirty = np.concatenate([self.dirty, np.zeros(added, np.bool_)])
        self.reads = np.concatenate([self.reads, np.zeros(added, np.uint32)])
        self.heat = np.concatenate([self.heat, np.zeros(added, np.float32)])
        self.spec = replace(self.spec, large_pages=self.spec.large_pages + len(blocks))

    def shrink(self, large_pages: int) -> Ints:
        """Drop every row from ``large_pages`` on; return the dropped entries, which the
        caller releases (frames and swap blocks)."""
        pages = large_pages * LARGE_PAGE_PAGES
        dropped = self.flat[pages:].copy()
        self.table = self.table[:large_pages].copy()
        self.flat = self.table.reshape(-1)
        self.home = self.home[:large_pages].copy()
        self.dirty = self.dirty[:pages].copy()
        self.reads = self.reads[:pages].copy()
        self.heat = self.heat[:pages].copy()
        self.spec = replace(self.spec, large_pages=large_pages)
        return dropped

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pages(self) -> int:
        return self.spec.pages

    @property
    def full(self) -> bool:
        return self.spec.mode is MemoryMode.FULL

    def require_bytes(self) -> None:
        if not self.full:
            raise AccountingOnly(self.name)

    def check_pages(self, pages: PageSelection) -> Ints:
        """``pages`` as a flat int64 array, all inside the guest."""
        given = np.asarray(pages)
        if given.size == 0:
            return np.zeros(0, np.int64)
        if given.dtype.kind not in "iu":
            raise InvalidArgument(f"page numbers must be integers, not {given.dtype}")
        wanted = given.astype(np.int64).reshape(-1)
        outside = (wanted < 0) | (wanted >= self.pages)
        if outside.any():
            raise PageOutOfRange(self.name, int(given.reshape(-1)[outside][0]), self.pages)
        return wanted

    def home_of(self, pages: Ints) -> Ints:
        return self.home[pages // LARGE_PAGE_PAGES]


_LAZY = frozenset({"table", "flat", "dirty", "reads", "heat"})
