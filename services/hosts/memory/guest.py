"""One VM's memory as the host sees it: its spec, page table and access bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from services.hosts.memory.content import DEFAULT_PROFILE, EMPTY_PROFILE, ContentProfile
from services.hosts.memory.errors import AccountingOnly, InvalidArgument, PageOutOfRange
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, Ints

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
    """A fixed-height, two-level page table and per-page dirty bits, read counts and heat.

    ``table[large_page, slot]`` is the entry of guest page ``large_page * 512 + slot`` (see
    ``geometry`` for the encoding): a lookup is one index, whatever the guest's size, and a
    row is one 2 MiB large page. ``home[large_page]`` is the NUMA node the large page was
    placed on; frames the page needs later are taken there first.
    """

    def __init__(self, spec: VmSpec, blocks: Ints, home: Ints) -> None:
        self.spec = spec
        self.table: Ints = blocks[:, None] * LARGE_PAGE_PAGES + np.arange(LARGE_PAGE_PAGES)
        self.flat: Ints = self.table.reshape(-1)  # the same entries, by guest page number
        self.home = home
        self.dirty = np.zeros(spec.pages, np.bool_)
        self.reads = np.zeros(spec.pages, np.uint32)
        self.heat = np.zeros(spec.pages, np.float32)

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
