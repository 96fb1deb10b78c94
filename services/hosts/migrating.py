"""What a host's hardware keeps of a guest in migration, beside its memory: on the source,
which pages have been sent (a page crosses once after a post-copy switchover, and a
hybrid resends only those it sent before that were written since); on the target, which
pages have arrived, the remote faults taken, and the writes of a guest that runs before
its pages are all there (kept for their page and applied, in order, once it arrives: the
vCPU that faulted waits for the page, then writes).

Like dirty bits, this is hardware state, not in the log: a process restarted mid-migration
has lost it, and the migration's checksums then tell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.hosts.memory import HostMemory
from services.hosts.memory.geometry import Ints, Mask
from services.hosts.memory.workload import Accesses


@dataclass
class Outgoing:
    """The source's side: pages sent, and the order the rest is pushed in after a
    switchover (random, seeded: post-copy's background order)."""

    host: str
    sent: Mask
    order: Ints
    cursor: int = 0

    @classmethod
    def of(cls, host: str, pages: int, seed: int) -> Outgoing:
        order = np.random.default_rng([0x60, seed]).permutation(pages).astype(np.int64)
        return cls(host, np.zeros(pages, np.bool_), order)

    def hot(self, heat: np.ndarray, min_heat: float) -> Ints:
        pages = np.flatnonzero(heat >= min_heat).astype(np.int64)
        self.sent[pages] = True
        return pages

    def resend(self, dirty: Ints, budget: int) -> tuple[Ints, Ints]:
        """Of the pages sent and written since, those to send again (at most ``budget``:
        what the downtime allows) and those handed back to the post-copy push: the
        target's copy of them is stale, and the page map says they live here."""
        stale = dirty[self.sent[dirty]]
        again, back = stale[:budget], stale[budget:]
        self.sent[back] = False
        return again, back

    def postcopy(self, demand: Ints, budget: int) -> tuple[Ints, int]:
        """The demanded pages not sent yet, then up to ``budget`` more in the push order;
        and how many of them were demanded."""
        asked = np.unique(demand[(demand >= 0) & (demand < len(self.sent))])
        asked = asked[~self.sent[asked]]
        self.sent[asked] = True
        rest = self.order[self.cursor :]
        unsent = np.flatnonzero(~self.sent[rest])[:budget] if budget else rest[:0]
        pushed = rest[unsent]
        if len(unsent) < budget:
            self.cursor = len(self.order)
        elif budget:
            self.cursor += int(unsent[-1]) + 1
        self.sent[pushed] = True
        return np.concatenate([asked, pushed]), len(asked)

    @property
    def left(self) -> int:
        return int(np.count_nonzero(~self.sent))


@dataclass
class Incoming:
    """The target's side: pages arrived, faults taken, writes waiting for their page."""

    host: str
    arrived: Mask
    faulted: Mask
    waiting: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)

    @classmethod
    def of(cls, host: str, pages: int) -> Incoming:
        return cls(host, np.zeros(pages, np.bool_), np.zeros(pages, np.bool_))

    def faults(self, accesses: list[Accesses]) -> Ints:
        """The pages these accesses touch before they have arrived, not faulted before:
        each a remote fault, in the order first touched."""
        touched = np.concatenate(
            [np.concatenate([a.write_pages, a.read_pages]) for a in accesses] or [np.zeros(0)]
        ).astype(np.int64)
        missing = touched[~self.arrived[touched] & ~self.faulted[touched]]
        _, first = np.unique(missing, return_index=True)
        return missing[np.sort(first)]

    def run(self, accesses: Accesses) -> Accesses:
        """Keep the writes to pages not there yet; the accesses left apply now."""
        here_w = self.arrived[accesses.write_pages]
        here_r = self.arrived[accesses.read_pages]
        self.faulted[accesses.write_pages[~here_w]] = True
        self.faulted[accesses.read_pages[~here_r]] = True
        for page, offset, data in zip(
            accesses.write_pages[~here_w].tolist(),
            accesses.write_offsets[~here_w].tolist(),
            accesses.write_data[~here_w],
            strict=True,
        ):
            self.waiting.setdefault(page, []).append((offset, data.tobytes()))
        return Accesses(
            accesses.write_pages[here_w],
            accesses.write_offsets[here_w],
            accesses.write_data[here_w],
            accesses.read_pages[here_r],
        )

    def gone(self, pages: Ints) -> None:
        """These pages' copies here are stale: they come again after the switchover."""
        self.arrived[pages] = False

    def arrive(self, mem: HostMemory, vm: str, pages: Ints) -> None:
        """``pages`` are in: the writes that waited for them land now, in order."""
        self.arrived[pages] = True
        for page in pages.tolist():
            for offset, data in self.waiting.pop(page, ()):
                mem.write(vm, page, data, offset)
