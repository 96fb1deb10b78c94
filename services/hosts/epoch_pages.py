"""Continuous checkpoints' page bookkeeping, on both sides of an FT pair.

The primary's side keeps each page's modification history (one bit per epoch: was it
written) and a copy of what it last sent of the pages the backup may name as candidates.
A dirty page whose history shows it unwritten for ``SETTLED_EPOCHS`` epochs is sent while
the primary runs, not while it is stunned (the backup writes it with the epoch's stunned
export, so a primary lost in between leaves the backup at the last whole epoch); a
candidate page with a copy travels as its XOR with that copy, compressed. The backup's
side names as candidates the pages whose last change touched few bytes.

Neither side is in the log: a hosts process that restarts starts with no history and no
copies, and sends whole pages until they are built again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from schemas.memory import MAX_CANDIDATES
from services.hosts.memory import PAGE_SIZE, HostMemory, PageBatch
from services.hosts.memory.geometry import Ints, PageBytes
from services.hosts.wire import DiffBatch

# A dirty page unwritten in this many epochs before is sent while the primary runs.
SETTLED_EPOCHS = 3
# A page whose change touched at most this many bytes is a candidate for diffs.
SMALL_CHANGE = PAGE_SIZE // 8
# Copies the primary keeps to diff against, per VM (64 MiB).
MAX_COPIES = 16_384

Sent = PageBatch | DiffBatch


@dataclass(slots=True, eq=False)
class PrimaryPages:
    """One protected primary's page history and the copies its diffs are made against."""

    history: npt.NDArray[np.uint8]  # bit i: written in the epoch i epochs before this one
    written: npt.NDArray[np.bool_]  # written in this epoch (sent ahead included)
    row: npt.NDArray[np.int32]  # per page: its copy's row in ``copies``, or -1
    copies: PageBytes
    free: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, pages: int) -> PrimaryPages:
        return cls(
            np.zeros(pages, np.uint8),
            np.zeros(pages, np.bool_),
            np.full(pages, -1, np.int32),
            np.zeros((0, PAGE_SIZE), np.uint8),
        )

    def settled(self, dirty: Ints) -> Ints:
        """Of the dirty pages, those not written in the last ``SETTLED_EPOCHS`` epochs."""
        recent = np.uint8((1 << SETTLED_EPOCHS) - 1)
        settled: Ints = dirty[(self.history[dirty] & recent) == 0]
        return settled

    def close_epoch(self, dirty: Ints, candidates: Ints) -> None:
        """The epoch ends with ``dirty`` (those sent ahead were marked already): shift it
        into the history, and drop the copies of pages that are neither candidates nor
        written in it (the backup cannot have named them)."""
        self.written[dirty] = True
        kept = self.written.copy()
        kept[candidates] = True
        gone = np.flatnonzero((self.row >= 0) & ~kept)
        self.free.extend(self.row[gone].tolist())
        self.row[gone] = -1
        shifted = np.left_shift(self.history, np.uint8(1))
        self.history = np.bitwise_or(shifted, self.written.astype(np.uint8))
        self.written[:] = False

    def send(self, batches: Iterable[PageBatch], candidates: Ints) -> list[Sent]:
        """The batches as they travel: a candidate page with a copy as its diff with it.
        What is sent becomes the copy the next diff is made against."""
        wanted = np.zeros(len(self.row), np.bool_)
        wanted[candidates] = True
        out: list[Sent] = []
        for b in batches:
            carried = b.pages[~b.zero]
            held = self.row[carried]
            diff = (held >= 0) & wanted[carried]
            if diff.any():
                out.append(
                    DiffBatch.of(
                        b.guest_pages, carried[diff], b.data[diff], self.copies[held[diff]]
                    )
                )
                whole = ~np.isin(b.pages, carried[diff])
                rest = PageBatch(b.guest_pages, b.pages[whole], b.zero[whole], b.data[~diff])
                if len(rest.pages):
                    out.append(rest)
            else:
                out.append(b)
            self._forget(b.pages[b.zero])
            self._keep(carried, b.data)
        return out

    def sent_ahead(self, pages: Ints) -> None:
        self.written[pages] = True

    def _forget(self, pages: Ints) -> None:
        held = self.row[pages]
        self.free.extend(held[held >= 0].tolist())
        self.row[pages] = -1

    def _keep(self, pages: Ints, data: PageBytes) -> None:
        held = self.row[pages]
        old = held >= 0
        self.copies[held[old]] = data[old]
        new = np.flatnonzero(~old)
        room = MAX_COPIES - (len(self.copies) - len(self.free))
        new = new[: max(0, room)]
        if not len(new):
            return
        short = len(new) - len(self.free)
        if short > 0:
            start = len(self.copies)
            grow = max(short, min(len(self.copies), MAX_COPIES - start))
            self.copies = np.concatenate([self.copies, np.zeros((grow, PAGE_SIZE), np.uint8)])
            self.free.extend(range(start, start + grow))
        rows = np.asarray([self.free.pop() for _ in range(len(new))], np.int32)
        self.row[pages[new]] = rows
        self.copies[rows] = data[new]


@dataclass(slots=True, eq=False)
class BackupPages:
    """Which of one backup's pages change little."""

    candidate: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, pages: int) -> BackupPages:
        return cls(np.zeros(pages, np.bool_))

    def apply(self, mem: HostMemory, vm: str, batches: Iterable[Sent]) -> tuple[int, int]:
        """Writes ``batches``, noting how much each page changed: the pages written and
        those of them that came as diffs."""
        pages = diffs = 0
        for b in batches:
            if isinstance(b, DiffBatch):
                xors = b.xors()
                written, changed = b.pages, np.count_nonzero(xors, axis=1)
                batch = PageBatch.of(b.guest_pages, b.pages, mem.copy_pages(vm, b.pages) ^ xors)
                diffs += len(b.pages)
            else:
                batch, written = b, b.pages[~b.zero]
                changed = np.count_nonzero(mem.copy_pages(vm, written) != b.data, axis=1)
                self.candidate[b.pages[b.zero]] = False
            mem.import_pages(vm, batch)
            self.candidate[written] = changed <= SMALL_CHANGE
            pages += len(batch.pages)
        return pages, diffs

    def candidates(self) -> list[int]:
        named: list[int] = np.flatnonzero(self.candidate)[:MAX_CANDIDATES].tolist()
        return named


@dataclass(slots=True)
class EpochPages:
    """The hosts process's FT checkpoint bookkeeping, by VM."""

    primaries: dict[str, PrimaryPages] = field(default_factory=dict)
    backups: dict[str, BackupPages] = field(default_factory=dict)

    def primary(self, vm: str, pages: int) -> PrimaryPages:
        p = self.primaries.get(vm)
        if p is None or len(p.row) != pages:
            p = self.primaries[vm] = PrimaryPages.of(pages)
        return p

    def backup(self, vm: str, pages: int) -> BackupPages:
        b = self.backups.get(vm)
        if b is None or len(b.candidate) != pages:
            b = self.backups[vm] = BackupPages.of(pages)
        return b

    def forget(self, vm: str) -> None:
        self.primaries.pop(vm, None)
        self.backups.pop(vm, None)
