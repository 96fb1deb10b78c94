"""Page sharing through NATS JetStream: the page-sharing daemon's scan rate next to a raw
numpy + xxhash pass over the same bytes, what it saves next to a brute-force count of
duplicate pages, how long a fork takes and what its children cost, and the read-pattern
policy on and off.

One embedded nats-server (temporary store, free loopback port, ``sync_interval: always``).
Each case runs a fresh stack in its own namespace in this process (``tests/unit/stack.py``'s
``service_stack``): the hosts (emulated hosts of 64 GiB over two NUMA nodes), both
schedulers and the page-sharing daemon; the migration coordinator is not started. A hosts
tick is ``--tick`` wall seconds and ``--tick`` x ``--speed`` emulated ones. The figures are
the log's and the hosts' telemetry's, read by watchers in this process, which stamp each
event with the wall time it arrived.

* **scan**: ``--scan-vms`` idle (powered-off) full-memory VMs of ``--scan-mib`` each, one
  guest-OS template, seeds 1..N, on one host, the daemon's budget at
  ``sharing_pages_per_second=--scan-budget`` (its budget accrues with the emulated clock, at
  most a second's worth: so high that the budget never limits it). The daemon asks the host
  for digests (``GetPageDigests``, at most 10,240 pages a query, two queries in flight per
  host, a reply asking for the next at once), compares them and proposes ``SharePages``;
  its indexes outlive a pass, and a settled page (the index's entry for its digest, or on
  that entry's frame) found unchanged is not looked up again. A pass is timed from one
  ``SharingPassCompleted`` to the next, by the wall times the daemon stamped on them
  (``occurred_at``). Only passes that began once every VM existed count
  (``pages_scanned`` is all their pages): the first of those learns digests, the one that
  proposes most is the ``proposing pass``, the next the ``verifying pass`` (it looks up
  again every page paired in the one before, now on its target's frame), and the passes
  after it that propose nothing are steady: they run until ``--scan-steady`` of them are
  in (or twice as many passes, whatever they propose). ``scan rate`` is the median
  pages/s of the steady passes. Raw: the same VMs' bytes, built apart from the stack with
  ``HostMemory`` and ``VmSpec`` (one contiguous array per VM, guest order, not timed),
  then xxh3_64 per 4 KiB page over memoryview slices (as ``digest_rows`` and
  ``page_digest_bench`` do) and ``np.unique`` over all the digests; best of ``--repeat``,
  after the stack has stopped; ``scan ratio`` is the scan rate over it. xxh3_64 over the
  raw digests in scan order must equal each pass's ``digest``: both read the same bytes.
  ``process CPU`` is this process's CPU time between the two events' arrivals over the
  wall time between them (every service and the watchers share this process).
* **savings**: ``--savings-template-vms`` VMs of one template and ``--savings-random-vms``
  of random content (each a template name of its own, so its template pages are unique),
  ``--savings-mib`` each, on one host; ``--savings-running`` of the template VMs and the
  first random VM are powered on and write pages every tick (their workload's writes, and
  disk reads landing in their page cache). The read-pattern policy is off here (its private
  copies are the reads case's). Once the daemon has made ``--passes`` full passes, every
  VM's per-page xxh3_64 digests are read (``GetVmMemory(vm, digests=True)``: at most 8,192
  pages a VM) twice in a row, just after a tick's sample arrived; they must be equal (no
  tick ran in between, else it is tried again), and the next tick's sample, taken as that
  tick starts, before its guests run, describes the memory read: its ``mem_pages_sharing``
  is what ``ListSharing`` reports (waited for) as ``pages_sharing`` and ``saved_mib``.
  Pages written during the scan are left out: the same VMs are built apart from the stack
  (``HostMemory``, ``VmSpec``: the bytes each page had when created), and a page counts
  only where its digest now is its digest as created. The brute-force count is the
  duplicates among those pages by their bytes (``np.unique`` over 4 KiB rows: pages less
  distinct contents); ``savings ratio`` is ``pages_sharing`` over it. For reference the
  duplicates among every page now, written ones too, by digest. Every idle VM's digests must
  equal its built-apart ones, and the unwritten pages' count by digest the one by bytes.
* **forks**: ``--first-forks`` running parents of 1 GiB and as many of 128 MiB (the first
  1 GiB one on a host of its own, the others on a second host; the scan budget at
  ``--fork-scan-budget``, so that the daemon's scan does not compete with the forks).
  ``ForkVm`` of one powered-off child is timed from its send until the child's ``VmCreated``
  arrives (the daemon asks the parent's scheduler to place it, whose rounds are 0.1 s here,
  and the host creates it); its ``host part`` is from the child's ``VmPlaced`` to its
  ``VmCreated``, by the times the scheduler and the host stamped on them. The first fork of
  each parent, which quiesces it into a template and checksums its memory (``VmTemplated``,
  in the same batch as the child), median over the parents of a size;
  then ``--later-forks`` more of one parent of each size (median). Then the 1 GiB template
  alone on its host is asked for children up to ``--children`` in all (``ForkVm``s of at
  most 64); every child has its parent's vCPU, and a host of 16 cores has room for 38
  (38,400 MHz, 1,000 MHz a vCPU): where the tree has ``VPLANE_HOST_CPU_CORES`` (the
  ``host_cpu_cores`` setting) the hosts get ``--fork-host-cores`` (room for 76 vCPUs at
  32), else the scheduler refuses the children past 38, which the output says. Once they
  are created, the host's telemetry: the host holds nothing else, so the frames it uses are
  the pages its VMs map less ``mem_pages_sharing``; next to one full copy per VM.
* **reads**: ``--reads-vms`` running VMs of one template, ``--reads-mib`` each (an odd
  number of 2 MiB large pages, so their vCPUs alternate between the two NUMA nodes), that
  read and do not write (``GuestWrites(pages_per_s=0, hot_fraction=--reads-hot-fraction)``:
  1,024 reads a tick, 90 % in the hot set; their page caches still take disk reads). Policy
  off first (``SetSharingPolicy(ReadPolicy(enabled=False))``); after ``--passes`` full
  passes, ``--reads-ticks`` samples are measured; then on (``ReadPolicy`` with its default
  counts and window, 8 ticks, and a hold of ``--reads-hold-ticks`` ticks' worth of
  emulated seconds), ``--reads-ticks`` samples more, in the same stack. ``saved MiB
  (mean)`` is the samples' ``mem_pages_sharing`` over the phase, ``at end``
  ``ListSharing``'s ``saved_mib`` after it.
  Per sample, the hosts' ``shared_reads``: shared pages read, read counts, each frame's
  node; a read is remote when the frame's node is not the VM's ``vcpu_node``. Private
  copies are the ``PagesUnshared`` events with reason ``read-pattern`` or ``remote-reads``;
  ``shared again`` counts the pages copied that a ``PagesShared`` of the phase lists again.
  (Both events are ``memory/<host>`` ones; the watchers follow every subject.)

The run fails (exit status 1) when the scan's digests and the raw pass's differ, when the
stack's memory is not what the seeds build, when ``ListSharing`` does not report the sample
read with the digests, when the policy on makes no private copy, and when a hosts service
logs ``GuestMemoryDiverged`` (its guest memory could not follow an event of the log); a
refused ``SetSharingPolicy`` stops it with an error.

    .venv/bin/python bench/sharing_bench.py [--cases scan,savings,forks,reads]
        [--scan-vms 8] [--scan-mib 256] [--scan-steady 5] [--savings-mib 32]
        [--children 50] [--fork-host-cores 32] [--reads-hold-ticks 20] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import xxhash
from _common import on_embedded_nats, until_changed
from ha_bench import stop_watch
from migration_bench import drop_namespace
from page_digest_bench import raw_digests

from schemas import Envelope, Message
from schemas.host import GuestMemoryDiverged, HostRegistered, HostTelemetry
from schemas.memory import GetVmMemory, PagesShared, PagesUnshared, VmMemory
from schemas.pool import Owner, vcpus_covered
from schemas.scheduling import Affinity, PlacementRules, PlaceVm, VmPlaced
from schemas.service import CommandRejected
from schemas.sharing import (
    MAX_FORK_CHILDREN,
    MAX_SHARED_READS,
    ForkVm,
    HostSharing,
    ListSharing,
    ReadPolicy,
    SetSharingPolicy,
    SharingPassCompleted,
    SharingPolicySet,
    SharingReport,
    VmTemplated,
)
from schemas.vm import GuestWrites, MemoryMode, VmCreated
from services.hosts.memory import LARGE_PAGE_PAGES, PAGE_SIZE, HostMemory, VmSpec
from shared.bus import Logged, Stream
from shared.bus.nats import NatsBus
from shared.logs import configure as configure_logs
from shared.settings import Settings
from shared.testing import unique_namespace
from tests.unit.stack import Stack, service_stack

T = TypeVar("T")
U64 = npt.NDArray[np.uint64]
MIB_PAGES = 256  # 4 KiB pages in a MiB
SERVICES = ("hosts", "scheduler-high", "scheduler-low", "page-sharing")
TEMPLATE = "linux"
TARGET_SCAN_RATIO = 0.5
TARGET_SAVINGS_RATIO = 0.99
WAIT = 240.0
CASES = ("scan", "savings", "forks", "reads")
FORK_SIZES = {"128 MiB": 128, "1 GiB": 1024}
# VPLANE_HOST_CPU_CORES: the hosts' cores, where this tree has the setting.
HOST_CORES_SETTABLE = "host_cpu_cores" in Settings.model_fields


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


class Recorder:
    """A case's events, each with the wall time (and this process's CPU time) it arrived,
    and its hosts' telemetry samples."""

    def __init__(self) -> None:
        self.events: list[tuple[Envelope[Message], float, float]] = []
        self.samples: list[tuple[HostTelemetry, float]] = []
        self._changed = asyncio.Event()

    async def on_event(self, entry: Logged) -> None:
        if entry.envelope is not None:
            self.events.append((entry.envelope, time.perf_counter(), time.process_time()))
            self._changed.set()

    async def on_sample(self, entry: Logged) -> None:
        env = entry.envelope
        if env is not None and isinstance(env.data, HostTelemetry):
            self.samples.append((env.data, time.perf_counter()))
            self._changed.set()

    def occurred(self, kind: type[T], after: float = 0.0) -> list[tuple[T, float]]:
        """The events of ``kind`` that arrived after ``after``, each with the wall time its
        producer stamped on it (``occurred_at``)."""
        return [
            (e.data, e.occurred_at.timestamp())
            for e, t, _ in self.events
            if isinstance(e.data, kind) and t > after
        ]

    def of(self, kind: type[T], after: float = 0.0) -> list[tuple[T, float, float]]:
        """The events of ``kind`` that arrived after ``after`` (perf_counter), in order."""
        return [(e.data, t, c) for e, t, c in self.events if isinstance(e.data, kind) and t > after]

    def ticks(self, host: str, after: float = 0.0) -> list[HostTelemetry]:
        return [s for s, t in self.samples if s.host == host and t > after]

    def last_tick(self, host: str) -> int:
        return max((s.tick for s, _ in self.samples if s.host == host), default=-1)

    async def until(self, check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """``check()``'s first answer other than None, looked for whenever something arrives."""
        return await until_changed(self._changed, check, what, timeout)


@dataclass
class Case:
    """A stack in a namespace of its own, one host ``h1`` (and ``h2`` if asked)."""

    stack: Stack
    rec: Recorder
    host: str = "h1"

    async def place(
        self,
        vm: str,
        *,
        mem_mib: int,
        seed: int,
        template: str = TEMPLATE,
        power_on: bool = False,
        host: str | None = None,
        writes: GuestWrites | None = None,
    ) -> None:
        await self.stack.client.send(
            PlaceVm(
                vm=vm,
                priority=Owner.LOW,
                cpu=1,
                mem_mib=mem_mib,
                memory_mode=MemoryMode.FULL,
                seed=seed,
                template=template,
                power_on=power_on,
                writes=writes,
                rules=PlacementRules(host_affinity=Affinity(must=[host or self.host])),
            )
        )

    def created_at(self, vm: str) -> float | None:
        return next((t for e, t, _ in self.rec.of(VmCreated) if e.vm == vm), None)

    async def settled(self, vms: Sequence[str]) -> tuple[float, dict[str, str]]:
        """Wait until each of ``vms`` is created or refused; when the last creation
        arrived, and the refusals' reasons."""
        wanted = set(vms)

        def done() -> tuple[float, dict[str, str]] | None:
            refused = {
                vm: e.reason
                for e, _, _ in self.rec.of(CommandRejected)
                if (vm := e.about.removeprefix("vm/")) in wanted
            }
            stamps = [self.created_at(vm) for vm in vms if vm not in refused]
            if None in stamps:
                return None
            return max((t for t in stamps if t is not None), default=time.perf_counter()), refused

        return await self.rec.until(done, f"VmCreated or a refusal for {len(vms)} VMs")

    async def created(self, vms: Sequence[str]) -> float:
        """Wait until every one of ``vms`` is created; when the last one arrived."""
        last, refused = await self.settled(vms)
        if refused:
            raise RuntimeError(f"refused: {next(iter(refused.values()))}")
        return last

    def passes(self, pages: int, after: float = 0.0) -> list[tuple[SharingPassCompleted, float]]:
        """Full passes over ``pages`` on the case's host (arrived after ``after``), each
        with its wall seconds from the pass before it, as the daemon stamped them
        (``occurred_at``: this process's loop may hand them over late)."""
        out = []
        previous: float | None = None
        for env, at, _ in self.rec.events:
            event = env.data
            if not isinstance(event, SharingPassCompleted) or event.host != self.host:
                continue
            wrapped = env.occurred_at.timestamp()
            if event.pages_scanned == pages and previous is not None and at > after:
                out.append((event, wrapped - previous))
            previous = wrapped
        return out

    async def full_passes(self, pages: int, count: int, after: float = 0.0) -> None:
        await self.rec.until(
            lambda: True if len(self.passes(pages, after)) >= count else None,
            f"{count} full passes over {pages} pages",
        )

    def diverged(self) -> list[str]:
        """Events the hosts' guest memory could not follow (``GuestMemoryDiverged``)."""
        return [
            f"{e.event_type} #{e.event_seq}: {e.error}"
            for e, _, _ in self.rec.of(GuestMemoryDiverged)
        ]

    async def sharing(self) -> HostSharing:
        reply = await self.stack.client.query(ListSharing())
        assert isinstance(reply, SharingReport)
        return next(h for h in reply.hosts if h.host == self.host)

    async def policy(self, policy: ReadPolicy) -> None:
        sent = time.perf_counter()
        env = await self.stack.client.send(SetSharingPolicy(policy=policy))

        def answered() -> str | None:
            if self.rec.of(SharingPolicySet, sent):
                return ""
            refused = (e for e, _, _ in self.rec.of(CommandRejected, sent))
            return next((e.reason for e in refused if e.command_id == env.id), None)

        refused = await self.rec.until(answered, "SharingPolicySet")
        if refused:
            raise RuntimeError(f"SetSharingPolicy refused: {refused}")

    async def next_sample(self, after_tick: int) -> HostTelemetry:
        """The host's first sample of a tick after ``after_tick``."""
        return await self.rec.until(
            lambda: next((s for s in self.rec.ticks(self.host) if s.tick > after_tick), None),
            f"a sample of {self.host} after tick {after_tick}",
        )


@contextlib.asynccontextmanager
async def case_stack(
    url: str, opts: argparse.Namespace, hosts: int = 1, **settings: object
) -> AsyncIterator[Case]:
    """A fresh stack in its own namespace, followed from its first event; gone after."""
    namespace = unique_namespace("shr")
    rec = Recorder()
    base: dict[str, object] = {
        "speed": opts.speed,
        "tick_seconds": opts.tick,
        "ha_failures": 0,
        "rebalance_threshold": 1.0,
        "check_folds": False,
    }
    try:
        async with service_stack(
            hosts,
            connect=lambda ns: NatsBus(url, ns, client_name="bench-sharing"),
            namespace=namespace,
            sharing=True,
            settings=base | settings,
            only=SERVICES,
        ) as stack:
            subs = [
                await stack.bus.watch(Stream.EVENTS, (), rec.on_event, from_seq=1),
                await stack.bus.watch(Stream.TELEMETRY, (), rec.on_sample),
            ]
            try:
                yield Case(stack, rec)
            finally:
                for sub in subs:
                    await stop_watch(sub)
    finally:
        await drop_namespace(url, namespace)


def pages_of(mem_mib: int) -> int:
    """A guest's 4 KiB pages: the hosts give guests whole 2 MiB large pages."""
    return -(-mem_mib // 2) * LARGE_PAGE_PAGES


def built(specs: Sequence[tuple[str, int, str]], mem_mib: int) -> Iterator[tuple[str, HostMemory]]:
    """Each VM's memory as created, built apart from the stack (a host memory each, one
    at a time)."""
    large = pages_of(mem_mib) // LARGE_PAGE_PAGES
    for name, seed, template in specs:
        mem = HostMemory([large])
        mem.create_vm(VmSpec(name, large, seed=seed, template=template))
        yield name, mem


def duplicates_of(rows: npt.NDArray[Any]) -> int:
    """Rows less distinct rows: what sharing every duplicate saves."""
    return len(rows) - len(np.unique(rows))


def as_rows(pages: npt.NDArray[np.uint8]) -> npt.NDArray[np.void]:
    """Each 4 KiB page as one opaque value, for ``np.unique`` over the pages' bytes."""
    return np.ascontiguousarray(pages).view(np.dtype((np.void, PAGE_SIZE))).ravel()


# Scan rate


async def run_scan(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    specs = [(f"scan{i:02d}", i, TEMPLATE) for i in range(1, opts.scan_vms + 1)]
    pages = opts.scan_vms * pages_of(opts.scan_mib)
    async with case_stack(url, opts, sharing_pages_per_second=opts.scan_budget) as case:
        for name, seed, template in specs:
            await case.place(name, mem_mib=opts.scan_mib, seed=seed, template=template)
        began = time.perf_counter()
        await case.created([name for name, _, _ in specs])
        progress(f"scan: {len(specs)} VMs created in {time.perf_counter() - began:.1f} s")
        await case.rec.until(
            lambda: scan_phases([e.proposed for e, _ in case.passes(pages)], opts.scan_steady),
            f"{opts.scan_steady} steady passes over {pages} pages",
        )
        passes = case.passes(pages)
        cpu = {e.full_scans: c for e, _, c in case.rec.of(SharingPassCompleted)}
        stamps = {e.full_scans: t for e, t, _ in case.rec.of(SharingPassCompleted)}
    rows: list[dict[str, Any]] = [
        {
            "full_scans": e.full_scans,
            "pages": e.pages_scanned,
            "wall_s": wall,
            "pages_per_s": e.pages_scanned / wall,
            "proposed": e.proposed,
            "volatile": e.volatile,
            "process_cpu": (cpu[e.full_scans] - cpu[e.full_scans - 1])
            / (stamps[e.full_scans] - stamps[e.full_scans - 1]),
            "digest": e.digest,
        }
        for e, wall in passes
    ]
    found = scan_phases([r["proposed"] for r in rows], opts.scan_steady)
    assert found is not None
    top, verifying, calm = found
    progress("scan: raw numpy + xxhash over the same bytes")
    raw = raw_scan(specs, opts.scan_mib, opts.repeat)
    rates = [rows[i]["pages_per_s"] for i in calm]
    median = statistics.median(rates) if rates else None
    return {
        "vms": len(specs),
        "mem_mib": opts.scan_mib,
        "pages": pages,
        "budget_pages_per_s": opts.scan_budget,
        "passes": rows,
        "steady": {
            "full_scans": [rows[i]["full_scans"] for i in calm],
            "rates": rates,
            "pages_per_s": median,
            "process_cpu": statistics.median(rows[i]["process_cpu"] for i in calm)
            if calm
            else None,
            "wanted": opts.scan_steady,
        },
        "verifying": rows[verifying],
        "proposing": rows[top],
        "raw": raw,
        "scan_ratio": None if median is None else median / raw["pages_per_s"],
        "verifying_ratio": rows[verifying]["pages_per_s"] / raw["pages_per_s"],
        "proposing_ratio": rows[top]["pages_per_s"] / raw["pages_per_s"],
        "target_ratio": TARGET_SCAN_RATIO,
        "same_bytes": all(r["digest"] == raw["digest"] for r in rows),
        "diverged": case.diverged(),
    }


def scan_phases(proposed: Sequence[int], steady: int) -> tuple[int, int, list[int]] | None:
    """The full passes' roles, by what each proposed, once ``steady`` steady passes are in
    (or twice as many passes after the verifying one, whatever they proposed): the
    proposing pass (the one that proposed most), the verifying one (the next: it looks up
    again every page paired in the one before), and the steady ones (after it, nothing
    proposed); indexes into ``proposed``, or None while too few passes are in."""
    if not proposed or max(proposed) == 0:
        return None
    top = proposed.index(max(proposed))
    after = range(top + 2, len(proposed))
    calm = [i for i in after if proposed[i] == 0]
    if len(calm) < steady and len(after) < 2 * steady:
        return None
    return top, top + 1, calm[:steady]


def raw_scan(specs: Sequence[tuple[str, int, str]], mem_mib: int, repeat: int) -> dict[str, Any]:
    """xxh3_64 per page over each VM's bytes (guest order, one array), then np.unique."""
    buffers = []
    for name, mem in built(specs, mem_mib):
        buffers.append(mem.copy_pages(name, np.arange(pages_of(mem_mib))))
    best = float("inf")
    digests: U64 = np.zeros(0, np.uint64)
    unique: U64 = digests
    for _ in range(repeat):
        start = time.perf_counter()
        digests = np.concatenate([raw_digests(b) for b in buffers])
        unique = np.unique(digests)
        best = min(best, time.perf_counter() - start)
    return {
        "pages": len(digests),
        "seconds": best,
        "pages_per_s": len(digests) / best,
        "duplicates": len(digests) - len(unique),
        "digest": xxhash.xxh3_64(digests.tobytes()).hexdigest(),
    }


# Savings


async def run_savings(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    template = [(f"tmpl{i:02d}", i, TEMPLATE) for i in range(1, opts.savings_template_vms + 1)]
    random = [
        (f"rand{i:02d}", 100 + i, f"random-{i}") for i in range(1, opts.savings_random_vms + 1)
    ]
    specs = template + random
    running = [name for name, _, _ in template[: opts.savings_running] + random[:1]]
    names = [name for name, _, _ in specs]
    pages = len(specs) * pages_of(opts.savings_mib)
    async with case_stack(url, opts, sharing_pages_per_second=opts.scan_budget) as case:
        await case.policy(ReadPolicy(enabled=False))
        for name, seed, tmpl in specs:
            await case.place(
                name, mem_mib=opts.savings_mib, seed=seed, template=tmpl, power_on=name in running
            )
        await case.created(names)
        await case.full_passes(pages, opts.passes)
        progress(f"savings: {opts.passes} full passes; reading the digests")
        digests, sample = await consistent_digests(case, names)
        report = await listed_with(case, sample.mem_pages_sharing)
        copies = sum(e.copied for e, _, _ in case.rec.of(PagesUnshared))
    return savings_figures(specs, running, opts.savings_mib, digests, sample, report) | {
        "private_copies": copies,
        "diverged": case.diverged(),
    }


async def vm_digests(case: Case, vms: Sequence[str]) -> dict[str, U64]:
    out = {}
    for vm in vms:
        reply = await case.stack.client.query(GetVmMemory(vm=vm, digests=True))
        assert isinstance(reply, VmMemory)
        assert reply.digests is not None
        out[vm] = np.asarray(reply.digests, np.uint64)
    return out


async def consistent_digests(
    case: Case, vms: Sequence[str], tries: int = 5
) -> tuple[dict[str, U64], HostTelemetry]:
    """Every VM's digests as one tick left them, and the host's sample of that memory:
    read twice just after a tick's sample arrived, equal both times, and no sample of a
    later tick meanwhile; the next tick's sample is taken as it starts, before its guests
    run, so it describes the memory read."""
    for _ in range(tries):
        tick = case.rec.last_tick(case.host)
        last = await case.next_sample(tick)
        first = await vm_digests(case, vms)
        again = await vm_digests(case, vms)
        if case.rec.last_tick(case.host) == last.tick and all(
            np.array_equal(first[vm], again[vm]) for vm in vms
        ):
            return first, await case.next_sample(last.tick)
    raise RuntimeError(f"no consistent read of the digests in {tries} tries")


async def listed_with(case: Case, pages_sharing: int) -> HostSharing:
    """``ListSharing``'s figures for the host once they come from this sample's figure."""
    deadline = time.monotonic() + 10.0
    while True:
        report = await case.sharing()
        if report.pages_sharing == pages_sharing or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.05)


def savings_figures(
    specs: Sequence[tuple[str, int, str]],
    running: Sequence[str],
    mem_mib: int,
    digests: dict[str, U64],
    sample: HostTelemetry,
    report: HostSharing,
) -> dict[str, Any]:
    """The brute-force count over the pages no guest wrote: those whose digest now is
    their digest as created (built apart), counted by their bytes."""
    memory = dict(built(specs, mem_mib))
    kept: list[npt.NDArray[np.void]] = []
    kept_digests: list[U64] = []
    written = 0
    idle_differ = {}
    for name, _, _ in specs:
        mem = memory[name]
        same = digests[name] == mem.page_digests(name)
        written += int(np.count_nonzero(~same))
        if name not in running and not same.all():
            idle_differ[name] = int(np.count_nonzero(~same))
        kept.append(as_rows(mem.copy_pages(name, np.flatnonzero(same))))
        kept_digests.append(digests[name][same])
    brute = duplicates_of(np.concatenate(kept))
    every = duplicates_of(np.concatenate(list(digests.values())))
    return {
        "vms": len(specs),
        "running": list(running),
        "mem_mib": mem_mib,
        "pages": sum(len(d) for d in digests.values()),
        "written_pages": written,
        "brute_force_pages": brute,
        "brute_force_mib": brute / MIB_PAGES,
        "brute_force_by_digest": duplicates_of(np.concatenate(kept_digests)),
        "every_page_by_digest": every,
        "idle_vms_differing": idle_differ,
        "sample_tick": sample.tick,
        "sample_pages_sharing": sample.mem_pages_sharing,
        "pages_sharing": report.pages_sharing,
        "pages_shared": report.pages_shared,
        "saved_mib": report.saved_mib,
        "bookkeeping_mib": report.bookkeeping_mib,
        "pages_unshared_again": report.pages_unshared_again,
        "full_scans": report.full_scans,
        "savings_ratio": report.pages_sharing / brute if brute else None,
        "every_page_ratio": report.pages_sharing / every if every else None,
        "target_ratio": TARGET_SAVINGS_RATIO,
    }


# Forks


@dataclass(frozen=True)
class Forked:
    """One fork of one child, wall seconds: ``ForkVm`` sent until its ``VmCreated``
    arrived; from its ``VmPlaced`` to its ``VmCreated`` as the scheduler and the host
    stamped them (the host's part); whether the parent's ``VmTemplated`` came with it."""

    seconds: float
    host_s: float
    templated: bool


async def run_forks(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    """``--first-forks`` parents of each size; the first 1 GiB one, whose family is
    measured, on h1 alone, every other on h2."""
    parents = {
        size: [f"p{mib}-{n}" for n in range(1, opts.first_forks + 1)]
        for size, mib in FORK_SIZES.items()
    }
    big = parents["1 GiB"][0]
    first: dict[str, list[Forked]] = {size: [] for size in parents}
    later: dict[str, list[Forked]] = {size: [] for size in parents}
    # Hosts with room for every child, where the hosts' cores can be set.
    cores = {"host_cpu_cores": opts.fork_host_cores} if HOST_CORES_SETTABLE else {}
    async with case_stack(
        url, opts, hosts=2, sharing_pages_per_second=opts.fork_scan_budget, **cores
    ) as case:
        every = [(size, name) for size, names in parents.items() for name in names]
        for seed, (size, name) in enumerate(every, start=1):
            host = "h1" if name == big else "h2"
            await case.place(name, mem_mib=FORK_SIZES[size], seed=seed, power_on=True, host=host)
        await case.created([name for _, name in every])
        for n in range(opts.first_forks):
            for size, names in parents.items():
                first[size].append(await fork(case, names[n], f"{names[n]}-c01"))
        for n in range(2, opts.later_forks + 2):
            for size, names in parents.items():
                later[size].append(await fork(case, names[0], f"{names[0]}-c{n:02d}"))
        progress(f"forks: {opts.first_forks} first and {opts.later_forks} later forks a size")
        made = opts.later_forks + 1
        rest = [f"{big}-c{n:02d}" for n in range(made + 1, opts.children + 1)]
        sent = time.perf_counter()
        for at in range(0, len(rest), MAX_FORK_CHILDREN):
            part = rest[at : at + MAX_FORK_CHILDREN]
            await case.stack.client.send(ForkVm(parent=big, children=part, power_on=False))
        done, refused = await case.settled(rest)
        family = 1 + made + len(rest) - len(refused)
        sample = await case.rec.until(
            lambda: next((s for s in case.rec.ticks("h1", done) if s.vms_total == family), None),
            "a sample of h1 with every child",
        )
        shape = next(e for e, _, _ in case.rec.of(HostRegistered) if e.host == "h1")
    mapped = family * pages_of(FORK_SIZES["1 GiB"])
    used = mapped - sample.mem_pages_sharing

    def summary(runs: list[Forked]) -> dict[str, Any]:
        return {
            "seconds": [f.seconds for f in runs],
            "median_s": statistics.median(f.seconds for f in runs),
            "host_s": [f.host_s for f in runs],
            "host_median_s": statistics.median(f.host_s for f in runs),
            "templated": [f.templated for f in runs],
        }

    def ratio(runs: dict[str, list[Forked]], host: bool) -> float:
        big, small = (
            statistics.median(f.host_s if host else f.seconds for f in runs[size])
            for size in ("1 GiB", "128 MiB")
        )
        return big / small

    return {
        "first": {size: summary(runs) for size, runs in first.items()},
        "later": {size: summary(runs) for size, runs in later.items()},
        "ratios": {
            "first": ratio(first, host=False),
            "later": ratio(later, host=False),
            "first_host": ratio(first, host=True),
            "later_host": ratio(later, host=True),
        },
        "rest_children": len(rest),
        "refused": refused,
        "rest_s": done - sent,
        "children": family - 1,
        "sample_tick": sample.tick,
        "mem_pages_sharing": sample.mem_pages_sharing,
        "mem_pages_shared": sample.mem_pages_shared,
        "mem_reserved_mib": sample.mem_reserved_mib,
        "used_mib": used / MIB_PAGES,
        "full_copies_mib": family * FORK_SIZES["1 GiB"],
        "used_share": used / mapped,
        "scan_budget_pages_per_s": opts.fork_scan_budget,
        "host_cores_set": HOST_CORES_SETTABLE,
        "host_cpu_cores": shape.cpu_cores,
        "host_cpu_mhz": shape.cpu_mhz,
        "host_vcpus": vcpus_covered(shape.cpu_cores * shape.cpu_mhz),
        "diverged": case.diverged(),
    }


async def fork(case: Case, parent: str, child: str) -> Forked:
    sent = time.perf_counter()
    await case.stack.client.send(ForkVm(parent=parent, children=[child], power_on=False))
    done = await case.created([child])
    placed = next(t for e, t in case.rec.occurred(VmPlaced, sent) if e.vm == child)
    created = next(t for e, t in case.rec.occurred(VmCreated, sent) if e.vm == child)
    templated = any(e.vm == parent for e, _, _ in case.rec.of(VmTemplated, sent))
    return Forked(done - sent, created - placed, templated)


# Read pattern


async def run_reads(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    names = [f"read{i:02d}" for i in range(1, opts.reads_vms + 1)]
    pages = len(names) * pages_of(opts.reads_mib)
    reader = GuestWrites(pages_per_s=0, hot_fraction=opts.reads_hot_fraction)
    async with case_stack(url, opts, sharing_pages_per_second=opts.scan_budget) as case:
        await case.policy(ReadPolicy(enabled=False))
        for seed, name in enumerate(names, start=1):
            await case.place(name, mem_mib=opts.reads_mib, seed=seed, power_on=True, writes=reader)
        await case.created(names)
        await case.full_passes(pages, opts.passes)
        progress(f"reads: {opts.passes} full passes with the policy off; measuring")
        off = await phase(case, opts.reads_ticks)
        policy = ReadPolicy(hold_s=opts.reads_hold_ticks * opts.tick * opts.speed)
        await case.policy(policy)
        progress("reads: policy on; measuring")
        on = await phase(case, opts.reads_ticks)
    nodes = {r.vm: r.vcpu_node for s, _ in case.rec.samples for r in s.shared_reads}
    return {
        "vms": len(names),
        "mem_mib": opts.reads_mib,
        "hot_fraction": opts.reads_hot_fraction,
        "vcpu_nodes": dict(sorted(nodes.items())),
        "policy": policy.model_dump(),
        "hold_ticks": policy.hold_s / (opts.tick * opts.speed),
        "off": off,
        "on": on,
        "diverged": case.diverged(),
    }


async def phase(case: Case, ticks: int) -> dict[str, Any]:
    """``ticks`` samples from now: the shared pages' reads, what is saved, copies made."""
    start = time.perf_counter()
    from_tick = case.rec.last_tick(case.host)

    def taken() -> list[HostTelemetry] | None:
        got = [s for s in case.rec.ticks(case.host, start) if s.tick > from_tick][:ticks]
        return got if len(got) == ticks else None

    samples = await case.rec.until(taken, f"{ticks} samples of {case.host}")
    end = time.perf_counter()
    report = await case.sharing()
    unshared = [(e, t) for e, t, _ in case.rec.of(PagesUnshared, start) if t <= end]
    copied: dict[str, int] = {}
    for e, _ in unshared:
        copied[e.reason.value] = copied.get(e.reason.value, 0) + e.copied
    pages = [(e.vm, p) for e, _ in unshared for p in e.pages]
    # Each page given a private copy in this phase: when its first copy's event arrived.
    private: dict[tuple[str, int], float] = {}
    for e, t in unshared:
        for p in e.pages:
            private.setdefault((e.vm, p), t)
    # Those shared again after that copy, in the phase (their hold over, or not kept).
    again = {
        page
        for e, t, _ in case.rec.of(PagesShared, start)
        if t <= end
        for pair in e.pairs
        for page in ((pair.vm_a, pair.page_a), (pair.vm_b, pair.page_b))
        if private.get(page, t) < t
    }
    per_tick = [reads_in(s) for s in samples]
    return {
        "ticks": [s.tick for s in samples],
        "per_tick": per_tick,
        "saved_mib_mean": statistics.mean(s.mem_pages_sharing for s in samples) / MIB_PAGES,
        "saved_mib": report.saved_mib,
        "reads_per_tick": statistics.mean(t["reads"] for t in per_tick),
        "remote_per_tick": statistics.mean(t["remote"] for t in per_tick),
        "truncated_ticks": sum(t["truncated"] for t in per_tick),
        "unshared_events": len(unshared),
        "copied": copied,
        "listed_pages": len(pages),
        "distinct_pages": len(private),
        "shared_again": len(again),
    }


def reads_in(sample: HostTelemetry) -> dict[str, int]:
    """A sample's reads of shared pages: all, remote ones, pages listed."""
    reads = remote = listed = 0
    for r in sample.shared_reads:
        listed += len(r.pages)
        for n, node in zip(r.reads, r.nodes, strict=True):
            reads += n
            remote += n if node != r.vcpu_node else 0
    return {
        "tick": sample.tick,
        "reads": reads,
        "remote": remote,
        "pages": listed,
        "truncated": int(listed >= MAX_SHARED_READS),
        "pages_sharing": sample.mem_pages_sharing,
    }


# The run


async def run(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    runners = {"scan": run_scan, "savings": run_savings, "forks": run_forks, "reads": run_reads}
    out: dict[str, Any] = {}
    for name in opts.cases:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        out[name] = await runners[name](url, opts)
        out[name]["wall_s"] = time.perf_counter() - began
        print(f"  {name}: {out[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return out


# The report


def met(ok: bool) -> str:
    return "target met" if ok else "target missed"


def report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        "== Page sharing through NATS JetStream (sync_interval: always): hosts, both "
        "schedulers and the page-sharing daemon in-process"
    )
    commit = "" if s["commit"] == "unknown" else f"; commit {s['commit']}"
    print(
        f"a tick: {s['tick_s']:g} s wall, {s['tick_s'] * s['speed']:g} s emulated; hosts of "
        f"64 GiB over two NUMA nodes{commit}"
    )
    for name, show in (
        ("scan", scan_report),
        ("savings", savings_report),
        ("forks", forks_report),
        ("reads", reads_report),
    ):
        if name in result:
            print()
            show(result[name])


def scan_report(r: dict[str, Any]) -> None:
    print(
        f"-- scan: {r['vms']} idle VMs x {r['mem_mib']} MiB ({r['pages']:,} pages), one "
        f"template, one host; budget {r['budget_pages_per_s']:g} pages per emulated s"
    )
    print(
        f"  {'pass':>4} {'pages':>9} {'wall s':>7} {'pages/s':>9} {'proposed':>9} "
        f"{'volatile':>8} {'process CPU':>11}"
    )
    for p in r["passes"]:
        print(
            f"  {p['full_scans']:>4} {p['pages']:>9,} {p['wall_s']:>7.2f} "
            f"{p['pages_per_s']:>9,.0f} {p['proposed']:>9,} {p['volatile']:>8,} "
            f"{p['process_cpu']:>10.0%}"
        )
    steady, verifying, proposing, raw = r["steady"], r["verifying"], r["proposing"], r["raw"]
    if steady["pages_per_s"] is None:
        print(
            f"  scan rate            {'-':>11} pages/s  (no steady pass: each pass after the "
            "verifying one proposed pairs)"
        )
    else:
        shown = ", ".join(f"{x:,.0f}" for x in steady["rates"])
        print(
            f"  scan rate            {steady['pages_per_s']:>11,.0f} pages/s  (median of "
            f"{len(steady['rates'])} steady passes, {steady['full_scans'][0]} to "
            f"{steady['full_scans'][-1]}, 0 pairs proposed: {shown})"
        )
    print(
        f"  verifying pass       {verifying['pages_per_s']:>11,.0f} pages/s  (pass "
        f"{verifying['full_scans']}: looks up again the pages paired in pass "
        f"{proposing['full_scans']}; {verifying['proposed']:,} pairs proposed)"
    )
    print(
        f"  proposing pass       {proposing['pages_per_s']:>11,.0f} pages/s  (pass "
        f"{proposing['full_scans']}: {proposing['proposed']:,} pairs proposed)"
    )
    print(
        f"  raw numpy + xxhash   {raw['pages_per_s']:>11,.0f} pages/s  (xxh3_64 per page + "
        f"np.unique, {raw['seconds']:.3f} s, best of {r['repeat']}; "
        f"{raw['duplicates']:,} duplicate pages)"
    )
    ratio = r["scan_ratio"]
    ok = ratio is not None and ratio >= r["target_ratio"]
    print(
        f"  scan ratio           {'-' if ratio is None else f'{ratio:.3f}':>11}           "
        f"(target >= {r['target_ratio']}: {met(ok)})"
    )
    print(f"  verifying-pass ratio {r['verifying_ratio']:>11.3f}")
    print(f"  proposing-pass ratio {r['proposing_ratio']:>11.3f}")
    same = "yes" if r["same_bytes"] else "NO"
    print(f"  same bytes (each pass's digest = xxh3_64 over the raw digests): {same}")


def savings_report(r: dict[str, Any]) -> None:
    print(
        f"-- savings: {r['vms']} VMs x {r['mem_mib']} MiB ({r['pages']:,} pages) on one host; "
        f"powered on: {', '.join(r['running'])}; read policy off"
    )
    print(
        f"  saved (ListSharing)  {r['saved_mib']:>9.2f} MiB  (pages_sharing "
        f"{r['pages_sharing']:,}, as the sample of tick {r['sample_tick']}: "
        f"{r['sample_pages_sharing']:,}; {r['full_scans']} passes)"
    )
    print(
        f"  brute force          {r['brute_force_mib']:>9.2f} MiB  ({r['brute_force_pages']:,} "
        f"duplicate pages by bytes among those no guest wrote; {r['written_pages']:,} "
        "written left out)"
    )
    ratio = r["savings_ratio"]
    shown = "-" if ratio is None else f"{ratio:.4f}"
    ok = ratio is not None and ratio >= r["target_ratio"]
    print(f"  savings ratio        {shown:>9}       (target >= {r['target_ratio']}: {met(ok)})")
    every = r["every_page_ratio"]
    print(
        f"  every page, written ones too (by digest): {r['every_page_by_digest']:,} duplicate "
        f"pages, ratio {'-' if every is None else f'{every:.4f}'}; bookkeeping "
        f"{r['bookkeeping_mib']:.2f} MiB; private copies {r['private_copies']}; unshared "
        f"again {r['pages_unshared_again']:,}"
    )
    agree = r["brute_force_by_digest"] == r["brute_force_pages"] and not r["idle_vms_differing"]
    print(
        f"  unwritten pages' duplicates by digest {r['brute_force_by_digest']:,}; idle VMs' "
        f"digests as built apart: {'yes' if agree else 'NO ' + str(r['idle_vms_differing'])}"
    )


def forks_report(r: dict[str, Any]) -> None:
    print(
        "-- forks: ForkVm of one powered-off child, sent until its VmCreated arrived; host "
        "part: from its VmPlaced"
    )
    cores = "VPLANE_HOST_CPU_CORES" if r["host_cores_set"] else "not settable in this tree"
    print(
        f"   (scan budget {r['scan_budget_pages_per_s']:g} pages per emulated s; hosts of "
        f"{r['host_cpu_cores']} cores x {r['host_cpu_mhz']:,} MHz ({cores}): room for "
        f"{r['host_vcpus']} vCPUs)"
    )

    def listed(xs: list[float]) -> str:
        return ", ".join(f"{x:.3f}" for x in xs)

    for kind, what in (("first", "parents"), ("later", "forks")):
        for size in FORK_SIZES:
            f = r[kind][size]
            print(
                f"  {kind} fork {size:>8}  {f['median_s']:7.3f} s   host part "
                f"{f['host_median_s']:.3f} s   (median of {len(f['seconds'])} {what}: "
                f"{listed(f['seconds'])})"
            )
    ratio = r["ratios"]
    print(
        f"  fork ratio 1 GiB / 128 MiB: first {ratio['first']:.2f}, later {ratio['later']:.2f} "
        f"(host part: first {ratio['first_host']:.2f}, later {ratio['later_host']:.2f})"
    )
    templated = all(all(r["first"][size]["templated"]) for size in FORK_SIZES)
    again = any(any(r["later"][size]["templated"]) for size in FORK_SIZES)
    print(
        f"  VmTemplated with every first fork: {'yes' if templated else 'NO'}; with a later "
        f"one: {'YES' if again else 'no'}"
    )
    if r["rest_children"]:
        made = r["rest_children"] - len(r["refused"])
        print(
            f"  {r['rest_children']} more children of the 1 GiB template asked for, {made} "
            f"created: {r['rest_s']:.2f} s until the last VmCreated"
        )
    if r["refused"]:
        first = next(iter(r["refused"].values()))
        print(f"  {len(r['refused'])} children refused: {first} (and so on)")
    print(
        f"  host memory used by the 1 GiB template and its {r['children']} children: "
        f"{r['used_mib']:,.0f} MiB (mem_pages_sharing {r['mem_pages_sharing']:,}, "
        f"mem_pages_shared {r['mem_pages_shared']:,}, tick {r['sample_tick']})"
    )
    print(
        f"    against {r['full_copies_mib']:,} MiB for {r['children'] + 1} full copies: "
        f"{r['used_share']:.1%}; reserved {r['mem_reserved_mib']:,} MiB"
    )


def reads_report(r: dict[str, Any]) -> None:
    nodes = ",".join(str(n) for n in r["vcpu_nodes"].values())
    p = r["policy"]
    print(
        f"-- reads: {r['vms']} running VMs x {r['mem_mib']} MiB of one template, reading "
        f"(hot fraction {r['hot_fraction']}), vCPU nodes {nodes}"
    )
    print(
        f"  policy on: a copy after {p['reads']} reads in {p['window_ticks']} ticks or "
        f"{p['remote_reads']} remote ones, held {p['hold_s']:g} emulated s "
        f"({r['hold_ticks']:g} ticks)"
    )
    print(
        f"  {'policy':6} {'ticks':>5} {'saved MiB':>9} {'at end':>7} {'shared reads':>12} "
        f"{'remote reads':>12} {'private copies':>14}  by reason"
    )
    print(f"  {'':6} {'':>5} {'(mean)':>9} {'':>7} {'per tick':>12} {'per tick':>12}")
    for name in ("off", "on"):
        f = r[name]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(f["copied"].items())) or "-"
        print(
            f"  {name:6} {len(f['ticks']):>5} {f['saved_mib_mean']:>9.2f} {f['saved_mib']:>7.2f} "
            f"{f['reads_per_tick']:>12,.0f} {f['remote_per_tick']:>12,.0f} "
            f"{sum(f['copied'].values()):>14,}  {reasons}"
        )
    on = r["on"]
    print(
        f"  policy on: {on['unshared_events']} PagesUnshared listing {on['listed_pages']:,} "
        f"pages ({on['distinct_pages']:,} distinct); {on['shared_again']:,} of them shared "
        "again after their copy, within the phase"
    )
    truncated = r["off"]["truncated_ticks"] + on["truncated_ticks"]
    if truncated:
        print(f"  {truncated} samples listed {MAX_SHARED_READS} pages: the hottest only")


def failures(result: dict[str, Any]) -> list[str]:
    """What makes the run fail: figures that do not describe the same memory, or a
    policy that never acts."""
    out = []
    if "scan" in result and not result["scan"]["same_bytes"]:
        out.append("scan: the daemon's pass digests differ from the raw pass's")
    if "savings" in result:
        s = result["savings"]
        if s["brute_force_by_digest"] != s["brute_force_pages"] or s["idle_vms_differing"]:
            out.append("savings: the stack's memory is not what the seeds build")
        if s["pages_sharing"] != s["sample_pages_sharing"]:
            out.append("savings: ListSharing did not report the sample read with the digests")
    if "reads" in result and not sum(result["reads"]["on"]["copied"].values()):
        out.append("reads: the policy on made no private copy")
    for name in CASES:
        out += [
            f"{name}: GuestMemoryDiverged {d}" for d in result.get(name, {}).get("diverged", [])
        ]
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--cases", default=",".join(CASES), help=f"of {','.join(CASES)} (all)")
    add("--scan-vms", type=int, default=8, help="idle VMs the scan reads (8)")
    add("--scan-mib", type=int, default=256, help="each (256)")
    add("--scan-budget", type=float, default=1e9, help="pages per emulated s (1e9)")
    add("--scan-steady", type=int, default=5, help="steady passes the scan rate is of (5)")
    add("--passes", type=int, default=3, help="full passes before measuring (3)")
    add("--repeat", type=int, default=3, help="raw passes, best of (3)")
    add("--savings-template-vms", type=int, default=6, help="of one template (6)")
    add("--savings-random-vms", type=int, default=2, help="of random content (2)")
    add("--savings-running", type=int, default=3, help="template VMs powered on (3)")
    add("--savings-mib", type=int, default=32, help="each, at most 32 (32)")
    add("--first-forks", type=int, default=3, help="parents of each size (3)")
    add("--later-forks", type=int, default=5, help="of one parent of each size (5)")
    add("--children", type=int, default=50, help="of the 1 GiB template in all (50)")
    add("--fork-scan-budget", type=float, default=1.0, help="pages per emulated s (1)")
    add("--fork-host-cores", type=int, default=32, help="each host's, if settable (32)")
    add("--reads-vms", type=int, default=6, help="running readers (6)")
    add("--reads-mib", type=int, default=34, help="each; odd large pages (34)")
    add("--reads-hot-fraction", type=float, default=0.01, help="of their pages (0.01)")
    add("--reads-ticks", type=int, default=16, help="samples per policy (16)")
    add("--reads-hold-ticks", type=float, default=20, help="the policy's hold, ticks (20)")
    add("--speed", type=float, default=50.0, help="emulated s per wall s (50)")
    add("--tick", type=float, default=1.0, help="the hosts' tick, wall s (1.0)")
    add("--json", dest="as_json", action="store_true", help="print JSON too")
    opts = parser.parse_args(argv)
    opts.cases = [c for c in opts.cases.split(",") if c]
    if set(opts.cases) - set(CASES):
        parser.error(f"cases of {', '.join(CASES)}")
    if not 16 <= opts.savings_mib <= 32:
        parser.error("--savings-mib: 16 to 32 (GetVmMemory gives digests of 8,192 pages)")
    if opts.passes < 2 or opts.first_forks < 1 or opts.children < opts.later_forks + 1:
        parser.error("--passes >= 2; --first-forks >= 1; --children > --later-forks")
    if opts.scan_steady < 1:
        parser.error("--scan-steady >= 1")
    return opts


def commit() -> str:
    import subprocess

    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent,
    )
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    started = time.perf_counter()
    result = on_embedded_nats("vplane-sharing-bench-", lambda url: run(url, opts))
    if "scan" in result:
        result["scan"]["repeat"] = opts.repeat
    result["settings"] = {
        "speed": opts.speed,
        "tick_s": opts.tick,
        "commit": commit(),
        "options": {k: v for k, v in vars(opts).items() if k != "as_json"},
    }
    result["failures"] = failures(result)
    result["elapsed_seconds"] = time.perf_counter() - started
    report(result)
    for failure in result["failures"]:
        print(f"  FAILED: {failure}")
    print(f"\nelapsed {result['elapsed_seconds']:.1f} s")
    if opts.as_json:
        print(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
