"""The analytic pre-copy model (Clark et al., "Live Migration of Virtual Machines",
NSDI 2005), against which the coordinator's real rounds are measured.

Round 0 sends every page; round i sends the pages dirtied while round i-1 was on the
wire, until what is left fits the downtime limit, and is then sent with the guest
stunned. Dirtying is linear in time, capped by the writable working set (a guest that
keeps rewriting the same pages dirties no more than those): the model's one
simplification, which the real rounds do not make.
"""

from __future__ import annotations

from dataclasses import dataclass

PAGE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Link:
    """What the model is asked about: a guest, its dirtying, the link and the limit."""

    memory_pages: int
    dirty_pages_per_s: float
    bytes_per_s: float
    downtime_s: float = 0.3
    page_bytes: int = PAGE_BYTES
    # Pages the guest rewrites; None: any page of its memory.
    working_set_pages: int | None = None
    max_rounds: int = 30

    def seconds(self, pages: float) -> float:
        return pages * self.page_bytes / self.bytes_per_s


@dataclass(frozen=True, slots=True)
class Prediction:
    """Pages per live round (round 0 first), the stop-and-copy, and the totals."""

    round_pages: tuple[int, ...]
    final_pages: int
    downtime_s: float
    total_bytes: int
    total_s: float
    # False when the rounds stopped shrinking (or ran out) before reaching the limit:
    # the stop-and-copy then sends whatever was left, with a downtime above it.
    converged: bool


def predict(link: Link) -> Prediction:
    """The rounds Clark et al.'s model expects for ``link``."""
    if link.memory_pages < 1 or link.bytes_per_s <= 0:
        raise ValueError("a guest has at least one page and the link a positive rate")
    cap = link.memory_pages if link.working_set_pages is None else link.working_set_pages
    rounds = [link.memory_pages]
    left = _dirtied(link, rounds[-1], cap)
    converged = link.seconds(left) <= link.downtime_s
    while not converged and len(rounds) < link.max_rounds and left < rounds[-1]:
        rounds.append(left)
        left = _dirtied(link, left, cap)
        converged = link.seconds(left) <= link.downtime_s
    pages = sum(rounds) + left
    return Prediction(
        round_pages=tuple(rounds),
        final_pages=left,
        downtime_s=link.seconds(left),
        total_bytes=pages * link.page_bytes,
        total_s=link.seconds(pages),
        converged=converged,
    )


def _dirtied(link: Link, sent_pages: int, cap: int) -> int:
    """Pages dirtied while ``sent_pages`` were on the wire."""
    return min(cap, round(link.dirty_pages_per_s * link.seconds(sent_pages)))
