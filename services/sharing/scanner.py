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
Mask = npt.NDArray[np.bool_]

# A page reference packs the guest's index on the host and the page: (vm << 32) | page.
_PAGE_BITS = 32
_PAGE_MASK = (1 << _PAGE_BITS) - 1


@dataclass
class Pages:
    """What the last look at a guest's pages found: digest and frame, per page, and
    whether the page was settled then (the index's entry for its digest, or on the same
    frame as that entry): a settled page found as it was is not looked up again."""

    digests: U64
    frames: I64
    seen: npt.NDArray[np.bool_]
    settled: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, pages: int) -> Pages:
        return cls(
            np.zeros(pages, np.uint64),
            np.full(pages, -1, np.int64),
            np.zeros(pages, np.bool_),
            np.zeros(pages, np.bool_),
        )

    @property
    def nbytes(self) -> int:
        return self.digests.nbytes + self.frames.nbytes + self.seen.nbytes + self.settled.nbytes


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
    passes: int = 0  # passes begun
    recorded: int = 0  # passes whose figures went into the log
    # Ranges taken whose digests never came (an ask that failed): taken again first.
    retry: list[PageRange] = field(default_factory=list)
    # Digests whose stable entry went (its page changed), by the pass it went in: their
    # settled pages are looked up again for a pass, to name a new entry.
    reopened: dict[int, int] = field(default_factory=dict)
    _reopened: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))

    def start_pass(self, guests: Sequence[tuple[str, int]]) -> None:
        """Begin a pass over ``guests`` (name, pages); forget guests gone since."""
        self.order = list(guests)
        self.at = self.page = 0
        self.retry = []
        self.passes += 1
        self.figures = PassFigures()
        sizes = dict(guests)
        # The indexes outlive a pass (a page's entry goes when its digest changes), but
        # not their guests, nor a guest's size.
        gone = {self.ids[n] for n, p in self.pages.items() if sizes.get(n) != len(p.digests)}
        for name in [n for n in self.pages if sizes.get(n) != len(self.pages[n].digests)]:
            del self.pages[name]
        if gone:
            for index in (self.stable, self.unstable):
                for k in [k for k, ref in index.items() if ref >> _PAGE_BITS in gone]:
                    del index[k]
        for name, count in guests:
            if name not in self.ids:
                self.ids[name] = len(self.ids)
                self.names[self.ids[name]] = name
            if name not in self.pages:
                self.pages[name] = Pages.of(count)
        self._reopen({k: n for k, n in self.reopened.items() if n >= self.passes - 1})

    @property
    def taken(self) -> bool:
        """Every page of the pass has been taken (their digests may still be on the way)."""
        return self.at >= len(self.order) and not self.retry

    def take(self, budget: int) -> list[PageRange]:
        """The ranges the next look covers: up to ``budget`` pages, those given back
        first, then on from the cursor, which moves past them (so that several looks can
        be on the way at once)."""
        ranges: list[PageRange] = []
        left = min(budget, MAX_DIGEST_PAGES)
        while left > 0 and self.retry:
            first = self.retry[0]
            take = min(left, first.count)
            ranges.append(PageRange(vm=first.vm, first=first.first, count=take))
            left -= take
            if take == first.count:
                self.retry.pop(0)
            else:
                rest = first.count - take
                self.retry[0] = PageRange(vm=first.vm, first=first.first + take, count=rest)
        while left > 0 and self.at < len(self.order):
            name, count = self.order[self.at]
            take = min(left, count - self.page)
            if take > 0:
                ranges.append(PageRange(vm=name, first=self.page, count=take))
                left -= take
                self.page += take
            if self.page >= count:
                self.at, self.page = self.at + 1, 0
        return ranges

    def give_back(self, ranges: Sequence[PageRange]) -> None:
        """Ranges whose digests never came: the pass takes them again."""
        self.retry.extend(ranges)

    def compare(self, reply: PageDigests, held: Callable[[str, I64], I64]) -> Found:
        """Take a reply in: find the pairs its unchanged pages make with pages seen
        before. ``held(vm, pages)`` says which of a guest's pages must not be shared now
        (a read pattern's private copies)."""
        digests = np.frombuffer(reply.digests, "<u8").astype(np.uint64)
        frames = np.frombuffer(reply.frames, "<i8").astype(np.int64)
        cand_d: list[U64] = []
        cand_r: list[I64] = []
        cand_f: list[I64] = []
        spans: list[tuple[Pages, I64]] = []
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
            still = unchanged & (known.frames[window] == f) & known.settled[window]
            if len(self._reopened):
                still &= ~np.isin(d, self._reopened)
            known.digests[window], known.frames[window], known.seen[window] = d, f, True
            known.settled[window] = still
            self.figures.digest.update(d.tobytes())
            pages = r.first + np.flatnonzero(unchanged & (f >= 0) & ~still)
            pages = np.setdiff1d(pages, held(r.vm, pages), assume_unique=True)
            cand_d.append(known.digests[pages])
            cand_r.append((np.int64(self.ids[r.vm]) << _PAGE_BITS) | pages)
            cand_f.append(known.frames[pages])
            spans.append((known, pages))
        scanned = start
        self.figures.scanned += scanned
        self.figures.volatile += volatile
        if not sum(len(c) for c in cand_d):
            return Found([], scanned, volatile)
        targets, members, paired = self._match(
            np.concatenate(cand_d), np.concatenate(cand_r), np.concatenate(cand_f)
        )
        # A page paired is settled once a later look finds it on its target's frame.
        offset = 0
        for known, pages in spans:
            known.settled[pages] = ~paired[offset : offset + len(pages)]
            offset += len(pages)
        # A page held since it was indexed is no pair's target either.
        keep = np.ones(len(targets), np.bool_)
        vm_ids = targets >> _PAGE_BITS
        for vm_id in np.unique(vm_ids).tolist():
            at = np.flatnonzero(vm_ids == vm_id)
            pages = targets[at] & _PAGE_MASK
            keep[at] = ~np.isin(pages, held(self.names[vm_id], pages))
        # Built without validation: the names and page numbers are the host's own.
        pairs = [
            PagePair.model_construct(
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

    def _forget_stale(self, vm: str, pages: I64, old: U64) -> None:
        """A page whose bytes changed no longer stands for its old digest; pages settled
        on its stable entry's frame are looked up again, to name another."""
        vm_id = self.ids[vm]
        reopened = dict(self.reopened)
        for page, digest in zip(pages.tolist(), old.tolist(), strict=True):
            ref = (vm_id << _PAGE_BITS) | page
            if self.unstable.get(digest) == ref:
                del self.unstable[digest]
            if self.stable.get(digest) == ref:
                del self.stable[digest]
                reopened[digest] = self.passes
        if len(reopened) != len(self.reopened):
            self._reopen(reopened)

    def _reopen(self, reopened: dict[int, int]) -> None:
        self.reopened = reopened
        self._reopened = np.fromiter(reopened, np.uint64, len(reopened))

    def _match(self, digests: U64, refs: I64, frames: I64) -> tuple[I64, I64, Mask]:
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
        # Index the digests: a match or a group makes a stable entry (leaving the
        # unstable index), a lone page an unstable one.
        to_stable = found | (group > 1)
        for k in unique[to_stable & from_unstable & found].tolist():
            del unstable[k]
        stable.update(zip(unique[to_stable].tolist(), target[to_stable].tolist(), strict=True))
        alone = ~to_stable
        unstable.update(zip(unique[alone].tolist(), target[alone].tolist(), strict=True))
        member_target = target[inverse]
        target_frames = self._frames_of(member_target)
        paired = (refs != member_target) & (frames != target_frames)
        return member_target[paired], refs[paired], paired

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
