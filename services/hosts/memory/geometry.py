"""Page geometry, the array types the model passes around, and the page-table entry encoding."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt

PAGE_SIZE = 4096
LARGE_PAGE_PAGES = 512
LARGE_PAGE_SHIFT = 9  # page number >> 9 is its large page; & 511 its slot inside it
LARGE_PAGE_SIZE = PAGE_SIZE * LARGE_PAGE_PAGES
PAGE_MIB = PAGE_SIZE / 2**20  # a page, in the MiB that sizes and telemetry are given in
LARGE_PAGE_MIB = LARGE_PAGE_SIZE // 2**20

T = TypeVar("T", bound=np.generic)

Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
PageBytes = npt.NDArray[np.uint8]  # shape (pages, PAGE_SIZE)

# A page-table entry is a frame number (>= 0) or, for a swapped-out page, the swap block b
# stored as ~b (< 0): one int64 lookup says where a page's bytes are.


def swap_entry(blocks: Ints) -> Ints:
    return np.invert(blocks)


def swap_block(entries: Ints) -> Ints:
    return np.invert(entries)


def block_rows(blocks: Ints) -> Ints:
    """The frames of each of ``blocks``, one row of 512 per block, in order."""
    rows: Ints = blocks[:, None] * LARGE_PAGE_PAGES + np.arange(LARGE_PAGE_PAGES)
    return rows


def whole_rows(table: Ints) -> Mask:
    """Which rows of a page table (one per large page) map one whole block, in order:
    2 MiB pages to the hardware."""
    first = table[:, :1]
    whole: Mask = (
        (first[:, 0] >= 0)
        & (first[:, 0] % LARGE_PAGE_PAGES == 0)
        & (table == first + np.arange(LARGE_PAGE_PAGES)).all(axis=1)
    )
    return whole


def readonly(array: npt.NDArray[T]) -> npt.NDArray[T]:
    """A view of ``array`` that cannot be written through."""
    view = array.view()
    view.flags.writeable = False
    return view
