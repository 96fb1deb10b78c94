"""Seeded guest-memory content: zero pages, pages of a shared guest-OS template, unique pages.

Which page is which kind comes from the VM's seed and its profile. The k-th template page of a
VM holds page ``k mod template_pages`` of the template image, as if the guest OS had loaded its
image in order, so VMs of the same template hold the same template pages at different guest
addresses: real duplicates for a content-based sharing policy to find. Template page bytes
depend only on the template name and page index; unique page bytes on the VM seed and its large
page. Bytes come from PCG64 streams seeded per 2 MiB block and are written a block at a time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt
import xxhash

from services.hosts.memory.errors import InvalidArgument
from services.hosts.memory.geometry import (
    LARGE_PAGE_PAGES,
    PAGE_SIZE,
    Ints,
    PageBytes,
    readonly,
)

# Stream tags keep the page-kind, template and unique streams of one seed independent.
_KINDS, _TEMPLATE, _UNIQUE = 1, 2, 3


class PageKind(IntEnum):
    ZERO = 0
    TEMPLATE = 1
    UNIQUE = 2


@dataclass(frozen=True, slots=True)
class ContentProfile:
    """The share of a guest's pages of each kind, and the size of its template image."""

    zero: float = 0.2
    template: float = 0.3
    unique: float = 0.5
    template_pages: int = 65_536  # a 256 MiB guest-OS image

    def __post_init__(self) -> None:
        shares = (self.zero, self.template, self.unique)
        if min(shares) < 0 or not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
            raise InvalidArgument(f"page-kind shares must be >= 0 and sum to 1, not {shares}")
        if self.template_pages < 1:
            raise InvalidArgument(f"a template image needs pages, not {self.template_pages}")


DEFAULT_PROFILE = ContentProfile()
EMPTY_PROFILE = ContentProfile(zero=1.0, template=0.0, unique=0.0)


@dataclass(frozen=True, slots=True, eq=False)
class ContentLayout:
    """Per guest page: its kind and, for template pages, its page in the template image."""

    kinds: npt.NDArray[np.uint8]
    template_index: Ints


def content_layout(seed: int, profile: ContentProfile, pages: int) -> ContentLayout:
    draws = np.random.default_rng([_KINDS, seed]).random(pages)
    bounds = np.cumsum([profile.zero, profile.template])
    kinds = np.searchsorted(bounds, draws, side="right").astype(np.uint8)
    is_template = kinds == PageKind.TEMPLATE
    index = (np.cumsum(is_template, dtype=np.int64) - 1) % profile.template_pages
    return ContentLayout(readonly(kinds), readonly(np.where(is_template, index, -1)))


def fill_large_page(
    out: PageBytes, *, seed: int, template: str, large_page: int, layout: ContentLayout
) -> None:
    """Write large page ``large_page`` of a guest into ``out`` (512 zeroed rows)."""
    window = slice(large_page * LARGE_PAGE_PAGES, (large_page + 1) * LARGE_PAGE_PAGES)
    kinds = layout.kinds[window]
    unique = np.flatnonzero(kinds == PageKind.UNIQUE)
    if len(unique):
        out[unique] = random_pages([_UNIQUE, seed, large_page], len(unique))
    slots = np.flatnonzero(kinds == PageKind.TEMPLATE)
    index = layout.template_index[window][slots]
    for block in np.unique(index // LARGE_PAGE_PAGES).tolist():
        here = index // LARGE_PAGE_PAGES == block
        out[slots[here]] = template_block(template, block)[index[here] % LARGE_PAGE_PAGES]


@functools.lru_cache(maxsize=8)
def template_block(template: str, block: int) -> PageBytes:
    """Pages 512*block .. 512*block+511 of a template image (read-only, cached)."""
    name = xxhash.xxh3_64_intdigest(template.encode())
    return readonly(random_pages([_TEMPLATE, name, block], LARGE_PAGE_PAGES))


def random_pages(entropy: list[int], count: int) -> PageBytes:
    """``count`` pages of PCG64 output for ``entropy`` (little-endian on every platform)."""
    raw = np.random.default_rng(entropy).bit_generator.random_raw(count * PAGE_SIZE // 8)
    words: npt.NDArray[np.uint64] = np.asarray(raw, dtype="<u8")
    return words.view(np.uint8).reshape(count, PAGE_SIZE)
