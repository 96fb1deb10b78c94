"""Wire the page-sharing daemon: it follows the VMs in the log, scans each host's pages on
the stack's emulated clock (asking the host for digests), proposes what matches, answers
the hosts' samples of shared-page reads with private copies, and forks VMs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import numpy as np
import structlog

from schemas import Envelope, Event, Message, Reply
from schemas.host import HostTelemetry
from schemas.memory import PagePair, PagesShared, PagesUnshared, SharePages
from schemas.queries import QueryFailed
from schemas.service import CommandRejected, RejectionCode
from schemas.sharing import (
    ForkVm,
    GetPageDigests,
    ListSharing,
    PageDigests,
    SetSharingPolicy,
    SharingPassCompleted,
    SharingPolicySet,
    SharingTelemetry,
    UnshareReason,
)
from services.sharing import reads
from services.sharing.forks import fork
from services.sharing.scanner import I64, HostScan
from services.sharing.state import Sharing, evolve
from services.sharing.views import host_figures, report
from shared.bus import PoisonMessage
from shared.loops import Loop
from shared.metrics import (
    SHARING_PAIRS,
    SHARING_PASSES,
    SHARING_PRIVATE_COPIES,
    SHARING_SAVED,
)
from shared.outcome import Outcome, answer
from shared.runtime import ServiceDefinition
from shared.samples import host_sample
from shared.settings import Settings

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
        """Which of a guest's pages are held from sharing at ``now``."""

        def held(vm: str, pages: I64) -> I64:
            state = self.state
            if not state.held:
                return pages[:0]
            mask = [state.held.get((vm, p), 0.0) > now for p in pages.tolist()]
            return pages[np.asarray(mask, np.bool_)] if mask else pages[:0]

        return held


def build(settings: Settings) -> ServiceDefinition:
    holder = Holder(settings.sharing_pages_per_second)
    # Emulated seconds a hosts tick stands for: read windows are counted in ticks.
    tick_s = settings.tick_seconds * settings.speed
    holder.state = Sharing(policy=reads.default_policy(tick_s))

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, env)
        if isinstance(env.data, PagesUnshared):
            holder.asked_private.difference_update((env.data.vm, p) for p in env.data.pages)
        if holder.live:
            _count(env.data)

    async def scan_step() -> list[Outcome]:
        now = definition.clock.now()
        return ask_digests(holder, now)

    async def on_reply(asked: Envelope[Message], reply: Envelope[Message]) -> list[Outcome]:
        return compared(holder, asked, reply, definition.clock.now())

    async def on_telemetry(env: Envelope[Message]) -> list[Outcome]:
        sample = host_sample(env, holder.state.hosts, "page-sharing daemon")
        holder.samples[sample.host] = sample
        SHARING_SAVED.labels(host=sample.host).set(sample.mem_shared_saved_mib)
        now = definition.clock.now()
        held = holder.held(now)

        def skip(vm: str, page: int) -> bool:
            return (vm, page) in holder.asked_private or len(
                held(vm, np.asarray([page], np.int64))
            ) > 0

        seen = reads.observe(holder.windows.get(sample.host, {}), holder.state.policy, sample, skip)

        def keep() -> None:
            holder.windows[sample.host] = seen.window
            for cmd in seen.commands:
                holder.asked_private.update((cmd.vm, p) for p in cmd.pages)

        return [Outcome(commands=seen.commands, cause=env, on_landed=[keep])]

    async def on_command(env: Envelope[Message]) -> Outcome:
        match env.data:
            case ForkVm():
                return fork(holder.state, env)
            case SetSharingPolicy():
                problem = reads.policy_problem(env.data.policy, tick_s)
                if problem is not None:
                    refused = CommandRejected.of(env, RejectionCode.INVALID_REQUEST, problem)
                    return answer(env, refused)
                return answer(env, SharingPolicySet(policy=env.data.policy))
        raise PoisonMessage(f"the page-sharing daemon does not handle {env.type}")

    async def query(env: Envelope[Message]) -> Reply:
        if isinstance(env.data, ListSharing):
            kept = {host: scan.bookkeeping_bytes() for host, scan in holder.scans.items()}
            return report(holder.state, holder.samples, kept, holder.rate)
        raise PoisonMessage(f"the page-sharing daemon does not answer {env.type}")

    async def setup() -> None:
        holder.live = True

    definition = ServiceDefinition(
        name=NAME,
        setup=setup,
        fold=fold,
        # The VMs (and hosts) it may share pages of, its pages' answers, its own record.
        fold_filters=("host.>", "vm.>", "memory.>", "sharing.>"),
        follow=True,
        decide=on_command,
        commands={"sharing-commands": ("sharing.>",)},
        telemetry=on_telemetry,
        queries={"sharing": query},
        replies=on_reply,
        loops=[Loop("scan", scan_step, every=STEP_SECONDS)],
        carried=holder,
    )
    return definition


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


def _count(event: Message) -> None:
    match event:
        case PagesShared():
            SHARING_PAIRS.labels(host=event.host).inc(len(event.pairs))
        case SharingPassCompleted():
            SHARING_PASSES.labels(host=event.host).inc()
        case PagesUnshared() if event.reason is not UnshareReason.REQUESTED:
            SHARING_PRIVATE_COPIES.labels(host=event.host, reason=event.reason.value).inc(
                event.copied
            )
