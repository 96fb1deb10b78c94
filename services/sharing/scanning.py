"""The daemon's working memory and its scanning steps: each host's next looks asked
(``GetPageDigests``, within the scan budget), and each reply compared, its pairs proposed
in ``SharePages`` batches that fit their messages, its pass recorded when done."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import numpy as np
import structlog

from schemas import Envelope, Event, Message
from schemas.host import HostTelemetry
from schemas.memory import PagePair, SharePages
from schemas.queries import QueryFailed
from schemas.sharing import GetPageDigests, PageDigests, SharingPassCompleted, SharingTelemetry
from services.sharing import reads
from services.sharing.scanner import I64, HostScan
from services.sharing.state import Sharing, evolve
from services.sharing.views import host_figures
from shared.outcome import Outcome

NAME = "page-sharing"

# How often each host's scan is looked at for pages its budget lets it ask for (a reply
# asks for the next pages at once), and how many looks at a host may be on the way at
# once: the host digests the next pages while the daemon compares the last.
STEP_SECONDS = 0.05
IN_FLIGHT = 2
# Pairs a SharePages proposes at most, and their size as JSON at most (a pair's is about
# PAIR_BYTES and its VMs' names, escaped in the outbox record): well below an envelope's.
SHARE_BATCH = 2_048
SHARE_BATCH_BYTES = 160_000
PAIR_BYTES = 72

log = structlog.get_logger("vplane.sharing")


class Holder:
    """The fold, each host's scan (the daemon's working memory, not in the log), the
    scans' budgets, the asks in flight, the latest sample of each host, and the
    read-pattern windows (carried over a restart: shared/carried.py)."""

    def __init__(self, pages_per_second: float) -> None:
        self.state = Sharing()
        self.rate = pages_per_second
        self.scans: dict[str, HostScan] = {}
        self.budget: dict[str, float] = {}
        self.clock_seen: dict[str, float] = {}
        self.asking: dict[str, int] = {}
        self.samples: dict[str, HostTelemetry] = {}
        self.windows: dict[str, reads.Window] = {}
        # Private copies asked for and not folded yet: not asked for again meanwhile.
        self.asked_private: set[tuple[str, int]] = set()
        # False while rebuilding: what was counted before is not counted again.
        self.live = False

    def save(self) -> dict[str, Any]:
        return {
            "windows": {
                host: [[vm, page, ticks] for (vm, page), ticks in window.items()]
                for host, window in self.windows.items()
            }
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.windows = {
            host: {
                (vm, int(page)): [(int(t), int(n), int(r)) for t, n, r in ticks]
                for vm, page, ticks in rows
            }
            for host, rows in saved.get("windows", {}).items()
        }

    def held(self, now: float) -> Callable[[str, I64], I64]:
        """Which of a guest's pages are held from sharing at ``now``: those a private
        copy was made of (until their hold ends), and those one was asked for and whose
        answer is not folded yet (sharing them now would undo the copy to come)."""
        by_vm: dict[str, list[int]] = {}
        for vm, page in self.asked_private:
            by_vm.setdefault(vm, []).append(page)
        for (vm, page), until in self.state.held.items():
            if until > now:
                by_vm.setdefault(vm, []).append(page)
        arrays = {vm: np.asarray(pages, np.int64) for vm, pages in by_vm.items()}

        def held(vm: str, pages: I64) -> I64:
            kept = arrays.get(vm)
            if kept is None:
                return pages[:0]
            return pages[np.isin(pages, kept)]

        return held


def ask_digests(holder: Holder, now: float) -> list[Outcome]:
    """Each host whose budget has grown since its last look asks for its next pages."""
    return [o for host in sorted(holder.state.hosts) for o in asks(holder, host, now)]


def asks(
    holder: Holder, host: str, now: float, *, cause: Envelope[Message] | None = None
) -> list[Outcome]:
    """The host's next looks, as many as may be on the way at once and its budget
    allows; a pass begins once the one before is recorded."""
    guests = holder.state.on_host(host)
    if not guests:
        return []
    # The budget grows with the stack's emulated time, at most one second's worth
    # banked (a daemon that was away does not scan in a burst).
    since = now - holder.clock_seen.get(host, now)
    holder.clock_seen[host] = now
    budget = min(holder.rate, holder.budget.get(host, 0.0) + since * holder.rate)
    scan = holder.scans.setdefault(host, HostScan(host))
    out = []
    while holder.asking.get(host, 0) < IN_FLIGHT:
        if scan.taken and holder.asking.get(host, 0) == 0 and scan.recorded == scan.passes:
            scan.start_pass([(g.name, g.pages) for g in guests])
        ranges = scan.take(int(budget))
        if not ranges:
            break
        budget -= sum(r.count for r in ranges)
        holder.asking[host] = holder.asking.get(host, 0) + 1
        key = f"scan:{host}:{scan.passes}:{ranges[0].vm}:{ranges[0].first}"
        query = GetPageDigests(host=host, ranges=ranges)
        out.append(Outcome(queries=[query], cause=cause, key=key))
    holder.budget[host] = budget
    return out


def compared(
    holder: Holder, asked: Envelope[Message], reply: Envelope[Message], now: float
) -> list[Outcome]:
    """A host's digests compared: the pairs they make proposed for sharing, the pass
    recorded when its last digests are in, and the host's next look asked at once."""
    query = asked.data
    assert isinstance(query, GetPageDigests)
    host = query.host
    holder.asking[host] = max(0, holder.asking.get(host, 0) - 1)
    scan = holder.scans.get(host)
    if isinstance(reply.data, QueryFailed) or not isinstance(reply.data, PageDigests):
        # Taken again, and asked for on a later step.
        holder.budget[host] = holder.budget.get(host, 0.0) + sum(r.count for r in query.ranges)
        if scan is not None:
            scan.give_back(query.ranges)
        log.warning("no digests from host", host=host, reason=getattr(reply.data, "reason", ""))
        return []
    if scan is None:
        return []
    found = scan.compare(reply.data, holder.held(now))
    # One command an outcome: its outbox record, and the host's answer listing its pairs,
    # each stay one message.
    out = [
        Outcome(
            commands=[SharePages(host=host, pairs=batch, skip_differing=True)],
            cause=reply,
            key=f"share{n}",
        )
        for n, batch in enumerate(share_batches(found.pairs))
    ]
    events: list[Event] = []
    if scan.taken and holder.asking[host] == 0 and scan.recorded < scan.passes:
        scan.recorded = scan.passes
        figures = scan.figures
        events.append(
            SharingPassCompleted(
                host=host,
                full_scans=holder.state.record(host).full_scans + 1,
                pages_scanned=figures.scanned,
                volatile=figures.volatile,
                unique=len(scan.unstable),
                proposed=figures.proposed,
                bookkeeping_bytes=scan.bookkeeping_bytes(),
                digest=figures.digest.hexdigest(),
            )
        )
    if events:
        out.append(Outcome(events=events, cause=reply, key="pass"))
    # The figures as they stand once this outcome lands (its pass counted).
    after = reduce(lambda s, e: evolve(s, Envelope.wrap(e, producer=NAME)), events, holder.state)
    reported = host_figures(after, host, holder.samples.get(host), scan.bookkeeping_bytes())
    out.append(Outcome(samples=[SharingTelemetry(figures=reported)], cause=reply, key="sample"))
    # Asked now rather than on the next step: a pass is not held up by the loop's period.
    return [*out, *asks(holder, host, now, cause=reply)]


def share_batches(pairs: Sequence[PagePair]) -> list[list[PagePair]]:
    """``pairs`` in SharePages batches of at most SHARE_BATCH pairs and SHARE_BATCH_BYTES
    as JSON (long VM names make a pair longer)."""
    batches: list[list[PagePair]] = []
    size = 0
    for pair in pairs:
        cost = PAIR_BYTES + len(pair.vm_a) + len(pair.vm_b)
        if not batches or len(batches[-1]) >= SHARE_BATCH or size + cost > SHARE_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(pair)
        size += cost
    return batches
