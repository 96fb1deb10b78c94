"""Guest pages in transit, for migration and fault-tolerance checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from services.hosts.memory.access import gather, store
from services.hosts.memory.errors import InvalidArgument, SizeMismatch
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import PAGE_SIZE, Ints, Mask, PageBytes, readonly
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.swap import SwapSpace


@dataclass(frozen=True, slots=True, eq=False)
class PageBatch:
    """Pages of one VM: zero pages travel as markers (no bytes), the others as bytes.

    ``data`` holds the bytes of the pages whose ``zero`` marker is False, in order.
    ``guest_pages`` is the size of the VM they came from; the destination must match it.
    """

    guest_pages: int
    pages: Ints
    zero: Mask
    data: PageBytes

    def __post_init__(self) -> None:
        if self.zero.dtype != np.bool_:
            raise InvalidArgument(f"zero markers are booleans, not {self.zero.dtype}")
        if len(self.zero) != len(self.pages):
            raise SizeMismatch(f"{len(self.pages)} pages with {len(self.zero)} zero markers")
        carried = len(self.pages) - int(np.count_nonzero(self.zero))
        if self.data.shape != (carried, PAGE_SIZE):
            raise SizeMismatch(
                f"{carried} non-zero pages need data of shape ({carried}, {PAGE_SIZE}), "
                f"not {self.data.shape}"
            )

    @classmethod
    def of(cls, guest_pages: int, pages: Ints, contents: PageBytes) -> PageBatch:
        zero: Mask = np.asarray(~contents.any(axis=1), np.bool_)
        return cls(guest_pages, readonly(pages), readonly(zero), readonly(contents[~zero]))

    @property
    def wire_bytes(self) -> int:
        """Bytes of page content the batch carries."""
        return self.data.nbytes


def export(
    pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints, batch: int
) -> Iterator[PageBatch]:
    """``pages`` in batches of ``batch``. Checks run now; each batch's bytes are read when it
    is produced, so a write between batches shows in the later batch (and in the dirty bits)."""
    guest.require_bytes()
    check_batch(batch)
    return _batches(pool, swap, guest, pages, batch)


def check_batch(batch: int) -> None:
    if batch < 1:
        raise InvalidArgument(f"a batch holds >= 1 page, not {batch}")


def _batches(
    pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints, batch: int
) -> Iterator[PageBatch]:
    for start in range(0, len(pages), batch):
        chunk = pages[start : start + batch]
        yield PageBatch.of(guest.pages, chunk, gather(pool, swap, guest, chunk))


def import_batch(pool: FramePool, swap: SwapSpace, guest: GuestMemory, batch: PageBatch) -> None:
    """Write a batch into ``guest``: a zero marker zeroes the page's frame, which stays inside
    the guest's whole large page."""
    guest.require_bytes()
    if batch.guest_pages != guest.pages:
        raise SizeMismatch(
            f"a batch of a {batch.guest_pages}-page VM cannot go into {guest.name!r} "
            f"({guest.pages} pages)"
        )
    pages = guest.check_pages(batch.pages)
    contents = np.zeros((len(pages), PAGE_SIZE), np.uint8)
    contents[~batch.zero] = batch.data
    store(pool, swap, guest, pages, np.zeros(len(pages), np.int64), contents)
