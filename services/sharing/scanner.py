"""One host's scan, as KSM's ksmd runs it: a pass goes over every page of the host's
full-memory guests in order, a budget at a time, and compares what it finds.

A page whose digest changed since the pass before is volatile and not compared (its
bytes are still moving: sharing it would only be broken again). An unchanged page is
looked up among the pages already shared (the stable index) and then among this pass's
other unchanged pages (the unstable index, emptied at every pass); a match is proposed
as a pair, and the host checks the bytes before it shares them. The indexes hold
digests, so what the daemon keeps costs a few bytes a page: its bookkeeping, which the
profit figures subtract.

None of this is in the log: like ksmd's trees it is the daemon's working memory, and a
restarted daemon begins a pass afresh (its first pass finds pages volatile-free only once
they have been seen twice), while what it did (pages shared, passes) is in the log.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import xxhash

from schemas.memory import PagePair
from schemas.sharing import MAX_DIGEST_PAGES, PageDigests, PageRange

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

# A page reference packs the guest's index on the host and the page: (vm << 32) | page.
_PAGE_BITS = 32
_PAGE_MASK = (1 << _PAGE_BITS) - 1


@dataclass
class Pages:
    """What the last look at a guest's pages found: digest and frame, per page."""

    digests: U64
    frames: I64
    seen: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, pages: int) -> Pages:
        return cls(
            np.zeros(pages, np.uint64), np.full(pages, -1, np.int64), np.zeros(pages, np.bool_)
        )

    @property
    def nbytes(self) -> int:
        return self.digests.nbytes + self.frames.nbytes + self.seen.nbytes


@dataclass(frozen=True, slots=True)
class Found:
    """What comparing one reply found."""

    pairs: list[PagePair]
    scanned: int
    volatile: int


@dataclass
class PassFigures:
    scanned: int = 0
    volatile: int = 0
    proposed: int = 0
    digest: xxhash.xxh3_64 = field(default_factory=xxhash.xxh3_64)


@dataclass
class HostScan:
    """One host's scan: the pass's order and cursor, the pages seen, the indexes."""

    host: str
    order: list[tuple[str, int]] = field(default_factory=list)  # (vm, pages) of this pass
    at: int = 0  # index into ``order``
    page: int = 0  # next page of order[at]
    pages: dict[str, Pages] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    stable: dict[int, int] = field(default_factory=dict)  # digest -> page reference
    unstable: dict[int, int] = field(default_factory=dict)
    figures: PassFigures = field(default_factory=PassFigures)
    passes: int = 0

    def start_pass(self, guests: Sequence[tuple[str, int]]) -> None:
        """Begin a pass over ``guests`` (name, pages); forget guests gone since."""
        self.order = list(guests)
        self.at = self.page = 0
        self.unstable = {}
        self.figures = PassFigures()
        here = {name for name, _ in guests}
        for gone in set(self.pages) - here:
            del self.pages[gone]
        for name, count in guests:
            if name not in self.ids:
                self.ids[name] = len(self.ids)
                self.names[self.ids[name]] = name
            if name not in self.pages or len(self.pages[name].digests) != count:
                self.pages[name] = Pages.of(count)

    @property
    def pass_done(self) -> bool:
        return self.at >= len(self.order)

    def next_ranges(self, budget: int) -> list[PageRange]:
        """The ranges the next look covers: up to ``budget`` pages on from the cursor
        (the cursor moves on once their digests are compared)."""
        ranges: list[PageRange] = []
        left = min(budget, MAX_DIGEST_PAGES)
        at, page = self.at, self.page
        while left > 0 and at < len(self.order):
            name, count = self.order[at]
            take = min(left, count - page)
            if take > 0:
                ranges.append(PageRange(vm=name, first=page, count=take))
                left -= take
                page += take
            if page >= count:
                at, page = at + 1, 0
        return ranges

    def compare(
        self, asked: Sequence[PageRange], reply: PageDigests, held: Callable[[str, I64], I64]
    ) -> Found:
        """Take a reply to ``asked`` in: move the cursor past it, and find the pairs its
        unchanged pages make with pages seen before. ``held(vm, pages)`` says which of a
        guest's pages must not be shared now (a read pattern's private copies)."""
        self._advance(asked)
        digests = np.frombuffer(reply.digests, "<u8").astype(np.uint64)
        frames = np.frombuffer(reply.frames, "<i8").astype(np.int64)
        cand_d: list[U64] = []
        cand_r: list[I64] = []
        cand_f: list[I64] = []
        volatile = start = 0
        for r in reply.ranges:
            seg = slice(start, start + r.count)
            start += r.count
            known = self.pages.get(r.vm)
            if known is None or r.first + r.count > len(known.digests):
                continue  # gone or resized since the pass began: the next pass sees it
            d, f = digests[seg], frames[seg]
            window = slice(r.first, r.first + r.count)
            seen, before = known.seen[window], known.digests[window]
            unchanged = seen & (before == d)
            changed = seen & ~unchanged
            volatile += int(np.count_nonzero(changed))
            self._forget_stale(r.vm, r.first + np.flatnonzero(changed), before[changed])
            known.digests[window], known.frames[window], known.seen[window] = d, f, True
            self.figures.digest.update(d.tobytes())
            pages = r.first + np.flatnonzero(unchanged & (f >= 0))
            pages = np.setdiff1d(pages, held(r.vm, pages), assume_unique=True)
            cand_d.append(known.digests[pages])
            cand_r.append((np.int64(self.ids[r.vm]) << _PAGE_BITS) | pages)
            cand_f.append(known.frames[pages])
        scanned = start
        self.figures.scanned += scanned
        self.figures.volatile += volatile
        if not sum(len(c) for c in cand_d):
            return Found([], scanned, volatile)
        targets, members = self._match(
            np.concatenate(cand_d), np.concatenate(cand_r), np.concatenate(cand_f)
        )
        # A page held since it was indexed is no pair's target either.
        keep = np.ones(len(targets), np.bool_)
        vm_ids = targets >> _PAGE_BITS
        for vm_id in np.unique(vm_ids).tolist():
            at = np.flatnonzero(vm_ids == vm_id)
            pages = targets[at] & _PAGE_MASK
            keep[at] = ~np.isin(pages, held(self.names[vm_id], pages))
        pairs = [
            PagePair(
                vm_a=self.names[a >> _PAGE_BITS],
                page_a=a & _PAGE_MASK,
                vm_b=self.names[b >> _PAGE_BITS],
                page_b=b & _PAGE_MASK,
            )
            for a, b in zip(targets[keep].tolist(), members[keep].tolist(), strict=True)
        ]
        self.figures.proposed += len(pairs)
        return Found(pairs, scanned, volatile)

    def bookkeeping_bytes(self) -> int:
        """What the daemon holds for this host: per-page arrays and both indexes."""
        arrays = sum(p.nbytes for p in self.pages.values())
        # A dict's table, plus its keys and values as Python ints.
        indexes = sum(sys.getsizeof(i) + 64 * len(i) for i in (self.stable, self.unstable))
        return arrays + indexes

    def _advance(self, asked: Sequence[PageRange]) -> None:
        for r in asked:
            if self.at < len(self.order) and self.order[self.at][0] == r.vm:
                self.page = r.first + r.count
                if self.page >= self.order[self.at][1]:
                    self.at, self.page = self.at + 1, 0

    def _forget_stale(self, vm: str, pages: I64, old: U64) -> None:
        """A page whose bytes changed no longer stands for its old digest."""
        vm_id = self.ids[vm]
        for page, digest in zip(pages.tolist(), old.tolist(), strict=True):
            ref = (vm_id << _PAGE_BITS) | page
            for index in (self.stable, self.unstable):
                if index.get(digest) == ref:
                    del index[digest]

    def _match(self, digests: U64, refs: I64, frames: I64) -> tuple[I64, I64]:
        """Pairs (target, member) of each candidate with the page it matches: the stable
        index's, the unstable index's, or a candidate of its digest in this reply (one on
        the frame most of them share); none where both are on one frame already. The
        index's page stays the target unless it is in this reply alone on a frame of
        its own while others of its digest share one (it was written since, with the
        same bytes): then they keep their frame, and the index names one of them."""
        unique, inverse = np.unique(digests, return_inverse=True)
        keys = unique.tolist()
        stable, unstable = self.stable, self.unstable
        hits = np.asarray([stable.get(k, -1) for k in keys], np.int64)
        from_unstable = hits < 0
        hits[from_unstable] = [unstable.get(k, -1) for k in unique[from_unstable].tolist()]
        found = hits >= 0
        leaders, leader_frames, most = _most_shared(inverse, refs, frames, len(unique))
        hit_frames = self._frames_of(np.where(found, hits, 0))
        on_hit_frame = np.bincount(
            inverse, weights=frames == hit_frames[inverse], minlength=len(unique)
        )
        moved = (
            found
            & np.isin(hits, refs)
            & (most > 1)
            & (hit_frames != leader_frames)
            & (on_hit_frame <= 1)
        )
        target = np.where(found & ~moved, hits, leaders)
        group = np.bincount(inverse, minlength=len(unique))
        # Index the digests: a match or a group makes a stable entry, a lone page an
        # unstable one.
        for k, ref, hit, size in zip(
            keys, target.tolist(), found.tolist(), group.tolist(), strict=True
        ):
            if hit or size > 1:
                stable[k] = ref
                unstable.pop(k, None)
            else:
                unstable[k] = ref
        member_target = target[inverse]
        target_frames = self._frames_of(member_target)
        paired = (refs != member_target) & (frames != target_frames)
        return member_target[paired], refs[paired]

    def _frames_of(self, refs: I64) -> I64:
        out = np.full(len(refs), -1, np.int64)
        vm_ids = refs >> _PAGE_BITS
        for vm_id in np.unique(vm_ids).tolist():
            at = np.flatnonzero(vm_ids == vm_id)
            known = self.pages.get(self.names[vm_id])
            if known is not None:
                pages = refs[at] & _PAGE_MASK
                inside = pages < len(known.frames)
                out[at[inside]] = known.frames[pages[inside]]
        return out


def _most_shared(inverse: I64, refs: I64, frames: I64, groups: int) -> tuple[I64, I64, I64]:
    """Per digest group: a member on the frame most of the group's members map, that
    frame, and how many map it."""
    order = np.lexsort((frames, inverse))
    g, f = inverse[order], frames[order]
    starts = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (f[1:] != f[:-1])])
    runs = np.diff(np.r_[starts, len(order)])
    # The longest run of each group first, then the first member of that run.
    best = starts[np.lexsort((-runs, g[starts]))]
    first_of_group = np.flatnonzero(np.r_[True, g[best][1:] != g[best][:-1]])
    chosen = best[first_of_group]
    leaders = np.empty(groups, np.int64)
    leader_frames = np.empty(groups, np.int64)
    most = np.zeros(groups, np.int64)
    leaders[g[chosen]] = refs[order[chosen]]
    leader_frames[g[chosen]] = f[chosen]
    lengths = dict(zip(starts.tolist(), runs.tolist(), strict=True))
    most[g[chosen]] = [lengths[c] for c in chosen.tolist()]
    return leaders, leader_frames, most
