"""Live migration of real guest memory through NATS JetStream, next to Clark et al.'s
pre-copy model and next to raw nats-py moving the same chunks.

One embedded nats-server (temporary store, free loopback port, ``sync_interval:
always``). For each case (a VM size, a dirty rate, a mode) a fresh stack in its own
namespace runs in this process (``tests/unit/stack.py``'s ``service_stack``: hosts with
two hosts, both schedulers, the migration coordinator), the link at ``--mbps``. A
full-memory VM is placed with ``GuestWrites`` at the case's rate, then moved to the
other host with ``MigrateVm``; the figures are the log's (``MigrationCompleted``, the
coordinator's ``MigrationRoundSent``/``MigrationRoundDone``). Pre-copy runs at every
size and rate; post-copy and hybrid at ``--modes-size`` and ``--modes-rates``.

Dirty rates, as a share of the link's pages per second (1 Gbit/s: 30,518): idle 0,
below 0.25, near 0.9, above 1.5. ``near`` and ``above`` write all over memory
(``hot_fraction=1.0``); ``below`` keeps the default hot set (10 % of the pages take
90 % of the writes).

The model (``services/migration/precopy_model.predict``) gets the same memory pages,
link and downtime limit. How many of the guest's writes dirty a page not dirty yet is not
known in advance, so its dirty rate is the write rate (``pages_per_s``) and its working
set the guest's hot set (``hot_fraction`` x pages: all of them for ``near`` and
``above``; for ``below`` the 10 % of writes outside the hot set are left out). It does
not throttle, does not know zero pages (the real rounds send them as markers, no bytes)
and leaves out the device state (256 KiB, sent in the stop-and-copy). Where it does not
converge, and for the other modes, no ratio is given.

Emulated time: a hosts tick is ``--tick`` wall seconds and ``--tick`` x ``--speed``
emulated ones, so a round ends at most a tick after its emulated duration has passed.
Downtime and total time are the rounds' bytes over the link (the coordinator's). Before
the migration starts, the guest writes a tick's worth of pages per tick (at ``above``,
10 s x 45,776 pages a tick by default): its zero pages are mostly gone by then.

Throughput: every data flow's ``put_data`` (publish, acknowledged) and ``read_data``
(consumer made, every chunk fetched) is timed on the services' own ``NatsBus``; raw
nats-py then publishes chunks of the same sizes to a stream configured as vplane's data
stream and reads them back (``RAW_WINDOW`` chunks in flight, acknowledgements gathered;
an ephemeral consumer, fetches of as many), flow by flow, on the same server, with the
stack up and the VM powered off. The vplane figure is the bus alone: not the export's
encoding, the import's decoding and checksums, nor the wait between a flow's put and its
read; every host and service shares this process's event loop meanwhile.

    .venv/bin/python bench/migration_bench.py [--sizes 256,1024] [--rates idle,below,near,above]
        [--modes postcopy,hybrid] [--modes-rates below,near,above] [--modes-size 256]
        [--mbps 1000] [--downtime-ms 300] [--speed 200] [--tick 0.05] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import nats
from _common import TARGET_RATIO, on_embedded_nats
from ha_bench import stop_watch
from nats.js import api

from schemas import Envelope, Message
from schemas.migration import MigrationRoundDone, MigrationRoundSent, RoundFigures
from schemas.pool import Owner
from schemas.scheduling import MigrateVm, MigrationRefused, PlaceVm
from schemas.service import CommandRejected
from schemas.transfers import (
    MigrationAborted,
    MigrationCompleted,
    MigrationMode,
    MigrationStarted,
)
from schemas.vm import GuestWrites, MemoryMode, PowerOffVm, VmCreated, VmPoweredOff
from services.migration.precopy_model import PAGE_BYTES, Link, Prediction, predict
from shared.bus import Logged, Stream
from shared.bus.nats import NatsBus
from shared.bus.nats_streams import DATA_MAX_AGE
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace
from tests.unit.stack import service_stack

T = TypeVar("T")
MIB = 1024 * 1024
VM = "mover"
# Dirty rates as a share of the link's pages per second.
RATES = {"idle": 0.0, "below": 0.25, "near": 0.9, "above": 1.5}
# These write anywhere in memory: the whole of it is the working set.
WHOLE_MEMORY = {"near", "above"}
TARGET_BYTES_RATIO = 1.1
# Raw's chunks in flight, either way: 32 MiB of 512 KiB chunks. nats-server refuses
# publishes beyond its stream's ingest buffer (max_buffered_size, 429 "too many requests")
# and cuts a client off with more than max_pending (64 MiB) undelivered to it.
RAW_WINDOW = 64
RAW_WAIT = 60.0
PLACE_SECONDS = 60.0


@dataclass
class Flow:
    """One data flow as the services' buses moved it: chunk sizes and wall seconds."""

    sizes: list[int] = field(default_factory=list)
    put_s: float = 0.0
    read_s: float = 0.0


class TimedNatsBus(NatsBus):
    """vplane's NATS bus, timing each data flow's publish and read into ``flows``."""

    def __init__(self, url: str, namespace: str, flows: dict[str, Flow]) -> None:
        super().__init__(url, namespace, client_name="bench-migration")
        self.flows = flows

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        start = time.perf_counter()
        await super().put_data(flow, chunks)
        record = self.flows.setdefault(flow, Flow())
        record.put_s += time.perf_counter() - start
        record.sizes = [len(c) for c in chunks]

    async def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]:
        start = time.perf_counter()
        async for chunk in super().read_data(flow, count, timeout=timeout):
            yield chunk
        self.flows.setdefault(flow, Flow()).read_s += time.perf_counter() - start


class Log:
    """The events of a case's namespace, as a watcher hands them over."""

    def __init__(self) -> None:
        self.events: list[Envelope[Message]] = []
        self._changed = asyncio.Event()

    async def on_entry(self, entry: Logged) -> None:
        if entry.envelope is not None:
            self.events.append(entry.envelope)
            self._changed.set()

    async def until(self, pick: Callable[[Message], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            found = next((x for e in self.events if (x := pick(e.data)) is not None), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {what} in {timeout:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    def of(self, kind: type[T]) -> list[T]:
        return [e.data for e in self.events if isinstance(e.data, kind)]

    def clock_at(self, kind: type[Message]) -> float | None:
        """The stack's emulated time when the first event of ``kind`` was appended."""
        return next((e.sim_time for e in self.events if isinstance(e.data, kind)), None)


@dataclass(frozen=True)
class Case:
    mem_mib: int
    rate: str
    mode: MigrationMode
    writes: GuestWrites

    @property
    def name(self) -> str:
        mode = "" if self.mode is MigrationMode.PRECOPY else f" {self.mode.value}"
        return f"{self.mem_mib} MiB {self.rate}{mode}"


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def link_pages_per_s(mbps: float) -> float:
    return mbps * 1e6 / 8 / PAGE_BYTES


def cases(opts: argparse.Namespace) -> list[Case]:
    """Pre-copy at every size and rate; the other modes at one size, at their rates."""

    def at(mem_mib: int, rate: str, mode: MigrationMode) -> Case:
        pages_per_s = round(RATES[rate] * link_pages_per_s(opts.mbps))
        hot = {"hot_fraction": 1.0} if rate in WHOLE_MEMORY else {}
        return Case(mem_mib, rate, mode, GuestWrites(pages_per_s=pages_per_s, **hot))

    precopy = [at(m, r, MigrationMode.PRECOPY) for m in opts.sizes for r in opts.rates]
    others = [at(opts.modes_size, r, mode) for r in opts.modes_rates for mode in opts.modes]
    return precopy + others


def model_of(case: Case, opts: argparse.Namespace) -> Prediction:
    pages = case.mem_mib * MIB // PAGE_BYTES
    return predict(
        Link(
            memory_pages=pages,
            dirty_pages_per_s=case.writes.pages_per_s,
            bytes_per_s=opts.mbps * 1e6 / 8,
            downtime_s=opts.downtime_ms / 1000,
            working_set_pages=max(1, math.ceil(case.writes.hot_fraction * pages)),
        )
    )


def ended(event: Message) -> Message | None:
    match event:
        case MigrationCompleted() | MigrationAborted() | MigrationRefused() if event.vm == VM:
            return event
        case CommandRejected() if event.about == f"vm/{VM}":
            return event
    return None


async def run_case(url: str, case: Case, opts: argparse.Namespace) -> dict[str, Any]:
    """Place the VM, migrate it, then move its flows' chunk sizes with raw nats-py."""
    flows: dict[str, Flow] = {}
    namespace = unique_namespace("mig")
    settings = {
        "speed": opts.speed,
        "tick_seconds": opts.tick,
        "migration_mbps": opts.mbps,
        "ha_failures": 0,
        "rebalance_threshold": 1.0,
        "check_folds": False,
    }
    log = Log()
    began = time.perf_counter()
    try:
        async with service_stack(
            2,
            connect=lambda ns: TimedNatsBus(url, ns, flows),
            namespace=namespace,
            settings=settings,
        ) as stack:
            sub = await stack.bus.watch(Stream.EVENTS, (), log.on_entry, from_seq=1)
            try:
                place = PlaceVm(
                    vm=VM,
                    priority=Owner.LOW,
                    cpu=2,
                    mem_mib=case.mem_mib,
                    memory_mode=MemoryMode.FULL,
                    seed=opts.seed,
                    writes=case.writes,
                )
                placed = time.perf_counter()
                await stack.client.send(place)
                created = await log.until(
                    lambda e: e if isinstance(e, VmCreated) and e.vm == VM else None,
                    PLACE_SECONDS,
                    f"VmCreated for {VM}",
                )
                placed = time.perf_counter() - placed
                progress(f"placed on {created.host} in {placed:.1f} s; migrating")
                target = "h2" if created.host == "h1" else "h1"
                moved = time.perf_counter()
                await stack.client.send(
                    MigrateVm(
                        vm=VM,
                        priority=Owner.LOW,
                        target=target,
                        mode=case.mode,
                        downtime_ms=opts.downtime_ms,
                    )
                )
                end: Message | None = None
                try:
                    end = await log.until(ended, opts.timeout, "end of the migration")
                except RuntimeError as err:
                    progress(str(err))
                moved = time.perf_counter() - moved
                progress(f"{type(end).__name__ if end else 'no end'} after {moved:.1f} s")
                if end is not None:
                    # On at full speed, the guest's ticks would write while raw runs.
                    where = target if isinstance(end, MigrationCompleted) else created.host
                    await stack.client.send(PowerOffVm(vm=VM, host=where))
                    await log.until(
                        lambda e: e if isinstance(e, VmPoweredOff) and e.vm == VM else None,
                        PLACE_SECONDS,
                        "VmPoweredOff",
                    )
                progress("raw nats-py moves the same chunks")
                raw = await raw_flows(url, [f.sizes for f in flows.values() if f.sizes])
                progress("raw done; stopping the stack")
            finally:
                await stop_watch(sub)
    finally:
        await drop_namespace(url, namespace)
    return figures(case, opts, log, end, flows, raw) | {
        "wall_s": {
            "case": time.perf_counter() - began,
            "place": placed,
            "migrate": moved,
        }
    }


def figures(
    case: Case,
    opts: argparse.Namespace,
    log: Log,
    end: Message | None,
    flows: dict[str, Flow],
    raw: dict[str, float],
) -> dict[str, Any]:
    model = model_of(case, opts)
    sent: list[RoundFigures] = [e.figures for e in log.of(MigrationRoundSent)]
    done = log.of(MigrationRoundDone)
    real: dict[str, Any] = {"outcome": type(end).__name__}
    match end:
        case MigrationCompleted():
            real |= {
                "mode": end.mode.value,
                "rounds": end.rounds,
                "bytes": end.bytes,
                "pages": end.pages,
                "zero_pages": end.zero_pages,
                "downtime_ms": end.downtime_ms,
                "total_s": end.total_s,
                "max_throttle": end.max_throttle,
                "mapped_pages": end.mapped_pages,
                "remote_faults": end.remote_faults,
                "full_speed_s": end.full_speed_s,
                "checksums_equal": end.checksums_equal,
            }
        case MigrationAborted():
            real |= {"reason": end.reason, "rounds": end.rounds, "bytes": end.bytes}
        case MigrationRefused() | CommandRejected():
            real |= {"reason": end.reason}
        case None:
            real |= {"outcome": "none", "reason": f"no end in {opts.timeout:.0f} s"}
    started = log.clock_at(MigrationStarted)
    finished = None if end is None else log.clock_at(type(end))
    real |= {
        "clock_s": None if started is None or finished is None else finished - started,
        "live_rounds": sum(r.live for r in sent),
        "link_s": sum(r.duration_s for r in sent),
        "mapped_pages": real.get("mapped_pages", sum(r.mapped_pages for r in sent)),
        "round_pages": [r.pages for r in sent],
        "dirty_pages_left": [d.dirty_pages_left for d in done],
    }
    moved = [f for f in flows.values() if f.sizes]
    vplane_bytes = sum(sum(f.sizes) for f in moved)
    put_s, read_s = sum(f.put_s for f in moved), sum(f.read_s for f in moved)
    throughput = {
        "chunks": sum(len(f.sizes) for f in moved),
        "bytes": vplane_bytes,
        "vplane_put_s": put_s,
        "vplane_read_s": read_s,
        "raw_put_s": raw["put_s"],
        "raw_read_s": raw["read_s"],
    } | rates(vplane_bytes, put_s + read_s, raw["put_s"] + raw["read_s"])
    return {
        "case": case.name,
        "mem_mib": case.mem_mib,
        "rate": case.rate,
        "mode": case.mode.value,
        "writes": case.writes.model_dump(),
        "real": real,
        "model": asdict(model) | {"rounds": len(model.round_pages) + 1},
        "ratios": ratios(case.mode, real, model),
        "throughput": throughput,
    }


def rates(moved: int, vplane_s: float, raw_s: float) -> dict[str, float | None]:
    vplane = moved / vplane_s / 1e6 if vplane_s else None
    raw = moved / raw_s / 1e6 if raw_s else None
    ratio = vplane / raw if vplane is not None and raw else None
    return {"vplane_mb_s": vplane, "raw_mb_s": raw, "throughput_ratio": ratio}


def ratios(mode: MigrationMode, real: dict[str, Any], model: Prediction) -> dict[str, Any]:
    """Real over model; none where the model does not converge or the VM did not move."""
    if mode is not MigrationMode.PRECOPY:
        return {"bytes": None, "downtime": None, "why": "the model is pre-copy's"}
    if not model.converged:
        return {"bytes": None, "downtime": None, "why": "model does not converge"}
    if real["outcome"] != "MigrationCompleted":
        return {"bytes": None, "downtime": None, "why": "not completed"}
    downtime = real["downtime_ms"] / (model.downtime_s * 1000) if model.downtime_s else None
    return {
        "bytes": real["bytes"] / model.total_bytes,
        "downtime": downtime,
        "why": None if downtime is not None else "model downtime 0 ms",
    }


async def raw_flows(url: str, flows: Sequence[list[int]]) -> dict[str, float]:
    """Raw nats-py moves chunks of these sizes, flow by flow: publish, then read back."""
    nc = await nats.connect(url, name="bench-migration-raw", connect_timeout=2)
    js = nc.jetstream(timeout=60)
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"BENCHRAW{tag.upper()}_DATA", f"benchraw{tag}.data"
    put_s = read_s = 0.0
    payloads: dict[int, bytes] = {}
    try:
        await js.add_stream(
            api.StreamConfig(
                name=stream,
                subjects=[f"{prefix}.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.OLD,
                max_age=DATA_MAX_AGE,
            )
        )
        for n, sizes in enumerate(flows):
            for size in sizes:
                if size not in payloads:
                    payloads[size] = os.urandom(size)
            subject = f"{prefix}.f{n}"
            start = time.perf_counter()
            for at in range(0, len(sizes), RAW_WINDOW):
                acks = [
                    await js.publish_async(subject, payloads[z])
                    for z in sizes[at : at + RAW_WINDOW]
                ]
                # nats-py raises a refused publish's error in its callback, leaving its
                # future pending: a refusal would otherwise wait here for ever.
                await asyncio.wait_for(asyncio.gather(*acks), RAW_WAIT)
            put_s += time.perf_counter() - start
            start = time.perf_counter()
            name = uuid.uuid4().hex
            await js.add_consumer(
                stream,
                api.ConsumerConfig(
                    name=name,
                    ack_policy=api.AckPolicy.NONE,
                    filter_subject=subject,
                    deliver_policy=api.DeliverPolicy.ALL,
                    mem_storage=True,
                    inactive_threshold=60,
                ),
            )
            sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
            got = 0
            while got < len(sizes):
                msgs = await sub.fetch(min(RAW_WINDOW, len(sizes) - got), timeout=RAW_WAIT)
                got += len(msgs)
            await sub.unsubscribe()
            read_s += time.perf_counter() - start
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {"put_s": put_s, "read_s": read_s}


async def drop_namespace(url: str, namespace: str) -> None:
    """The case's streams go, with the pages in its data stream."""
    nc = await nats.connect(url, name="bench-migration-cleanup", connect_timeout=2)
    try:
        jsm = nc.jsm()
        for info in await jsm.streams_info():
            if info.config.name and info.config.name.startswith(f"{namespace.upper()}_"):
                await jsm.delete_stream(info.config.name)
    finally:
        await nc.close()


async def run(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    results = []
    for case in cases(opts):
        print(f"running {case.name} ...", file=sys.stderr, flush=True)
        result = await run_case(url, case, opts)
        print(f"  {case.name}: {result['wall_s']['case']:.1f} s", file=sys.stderr, flush=True)
        results.append(result)
    return {"cases": results}


def summary(results: list[dict[str, Any]], opts: argparse.Namespace) -> dict[str, Any]:
    """The throughput over every case, and each target: met, missed or not measured."""
    moved = sum(r["throughput"]["bytes"] for r in results)
    vplane_s = sum(
        r["throughput"]["vplane_put_s"] + r["throughput"]["vplane_read_s"] for r in results
    )
    raw_s = sum(r["throughput"]["raw_put_s"] + r["throughput"]["raw_read_s"] for r in results)
    overall = rates(moved, vplane_s, raw_s)
    converging = [r for r in results if r["model"]["converged"] and r["mode"] == "precopy"]
    downtimes = {r["case"]: r["real"].get("downtime_ms") for r in converging}
    bytes_ratios = {r["case"]: r["ratios"]["bytes"] for r in converging}
    targets = {
        "downtime": {
            "target_ms": opts.downtime_ms,
            "by_case": downtimes,
            "met": bool(downtimes)
            and all(d is not None and d <= opts.downtime_ms for d in downtimes.values()),
        },
        "bytes": {
            "target_ratio": TARGET_BYTES_RATIO,
            "by_case": bytes_ratios,
            "met": bool(bytes_ratios)
            and all(b is not None and b <= TARGET_BYTES_RATIO for b in bytes_ratios.values()),
        },
        "throughput": {
            "target_ratio": TARGET_RATIO,
            "ratio": overall["throughput_ratio"],
            "met": (overall["throughput_ratio"] or 0.0) >= TARGET_RATIO,
        },
        "remote_faults": remote_faults(results),
    }
    totals = {"bytes": moved, "vplane_s": vplane_s, "raw_s": raw_s}
    return {"throughput": totals | overall, "targets": targets}


def remote_faults(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Hybrid against post-copy, where both ran for the same size and rate."""
    pairs = []
    for hybrid in (r for r in results if r["mode"] == "hybrid"):
        post = next(
            (
                r
                for r in results
                if r["mode"] == "postcopy"
                and (r["mem_mib"], r["rate"]) == (hybrid["mem_mib"], hybrid["rate"])
            ),
            None,
        )
        if post is None:
            continue
        h, p = hybrid["real"].get("remote_faults"), post["real"].get("remote_faults")
        pairs.append(
            {"case": f"{hybrid['mem_mib']} MiB {hybrid['rate']}", "hybrid": h, "postcopy": p}
        )
    measurable = [p for p in pairs if p["hybrid"] is not None and p["postcopy"]]
    met = bool(measurable) and all(p["hybrid"] < p["postcopy"] for p in measurable)
    return {"pairs": pairs, "measured": bool(measurable), "met": met}


def failures(results: list[dict[str, Any]]) -> list[str]:
    """What makes the run fail: a pre-copy migration the model says converges that did
    not complete, one that did not end in time, or memory that did not arrive as it left."""
    out = []
    for r in results:
        real = r["real"]
        expected = r["mode"] == "precopy" and r["model"]["converged"]
        if (expected and real["outcome"] != "MigrationCompleted") or real["outcome"] == "none":
            out.append(f"{r['case']}: {real['outcome']} ({real.get('reason')})")
        if real["outcome"] == "MigrationCompleted" and real["checksums_equal"] is not True:
            out.append(f"{r['case']}: checksums_equal={real['checksums_equal']}")
    return out


def num(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{format(value, fmt):>{width}}"


def met(ok: bool) -> str:
    return "target met" if ok else "target missed"


def report(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(
        f"== Live migration through NATS JetStream (sync_interval: always): 2 hosts in-process, "
        f"link {s['mbps']:.0f} Mbit/s ({s['link_pages_per_s']:,.0f} pages/s), downtime limit "
        f"{s['downtime_ms']} ms"
    )
    print(
        f"speed {s['speed']:g} (a tick: {s['tick_s']:g} s wall, {s['tick_s'] * s['speed']:g} s "
        "emulated); model: Clark et al. (precopy_model.predict), dirty rate = write rate, "
        "working set = hot set"
    )
    print()
    print(
        f"  {'':24}{'rounds':>11}  {'MiB sent':>17}  {'downtime ms':>17}  {'total s':>13}"
        f"  {'max':>5}  {'bytes':>6}  {'downtime':>8}"
    )
    print(
        f"  {'case':24}{'real':>5} {'model':>5}  {'real':>8} {'model':>8}  {'real':>8} "
        f"{'model':>8}  {'real':>6} {'model':>6}  {'thr.':>5}  {'ratio':>6}  "
        f"{'ratio':>8}"
    )
    for r in result["cases"]:
        real, model, ratio = r["real"], r["model"], r["ratios"]
        converged = model["converged"]
        print(
            f"  {r['case']:24}{num(real.get('rounds'), 'd', 5)} {model['rounds']:>5}  "
            f"{num(real.get('bytes', 0) / MIB, '.1f', 8)} {model['total_bytes'] / MIB:>8.1f}  "
            f"{num(real.get('downtime_ms'), '.1f', 8)} "
            f"{model['downtime_s'] * 1000:>8.1f}{' ' if converged else '*'} "
            f"{num(real.get('total_s'), '.2f', 6)} "
            f"{model['total_s']:>6.2f}  {num(real.get('max_throttle'), '.2f', 5)}  "
            f"{num(ratio['bytes'], '.2f', 6)}  {num(ratio['downtime'], '.2f', 8)}"
        )
    print()
    print(
        "  * the model does not converge: its rounds stop shrinking (or reach 30) above the\n"
        "    limit, and it ends with a stop-and-copy of what is left; no ratio is given.\n"
        "  total s and downtime ms are emulated: the rounds' bytes over the link "
        "(MigrationCompleted).\n  Post-copy and hybrid rows: the model columns are "
        "pre-copy's for the same guest, no ratio.\n  A converging row without a downtime "
        "ratio: the model's downtime is 0 ms (nothing dirtied;\n  it leaves out the "
        "device state)."
    )
    for r in result["cases"]:
        details(r)
    throughput_table(result)
    targets(result)


def details(r: dict[str, Any]) -> None:
    real, model, w = r["real"], r["model"], r["writes"]
    print()
    print(
        f"  {r['case']}: GuestWrites(pages_per_s={w['pages_per_s']}, "
        f"hot_fraction={w['hot_fraction']}, hot_share={w['hot_share']}), mode {r['mode']}"
    )
    outcome = real["outcome"]
    if outcome == "MigrationCompleted":
        outcome += f" (mode {real['mode']}), checksums_equal={real['checksums_equal']}"
    else:
        outcome += f": {real.get('reason')}"
    print(f"    {outcome}")
    print(f"    pages per round, real:  {' '.join(map(str, real['round_pages']))}")
    print(f"    dirty after each live round: {' '.join(map(str, real['dirty_pages_left']))}")
    shown = [*model["round_pages"], model["final_pages"]]
    print(f"    pages per round, model: {' '.join(map(str, shown))}")
    if "zero_pages" in real:
        print(
            f"    zero-page savings: {real['zero_pages']} zero pages sent as markers, "
            f"{real['zero_pages'] * PAGE_BYTES / MIB:.1f} MiB not sent"
        )
    print(
        f"    disk-mapping savings: {real['mapped_pages']} pages sent as (disk, block), "
        f"{real['mapped_pages'] * PAGE_BYTES / MIB:.1f} MiB not sent"
    )
    if real.get("remote_faults"):
        print(
            f"    remote_faults: {real['remote_faults']}, full speed "
            f"{num(real.get('full_speed_s'), '.2f', 0)} s after the switchover"
        )
    wall = r["wall_s"]
    print(
        f"    wall: place {wall['place']:.1f} s, migrate {wall['migrate']:.1f} s, "
        f"case {wall['case']:.1f} s; the stack's clock moved {num(real['clock_s'], '.1f', 0)} "
        "s from MigrationStarted to the end"
    )


def throughput_table(result: dict[str, Any]) -> None:
    print()
    print(
        "== Page chunks through the bus: the services' put_data + read_data next to raw "
        "nats-py,\n   chunks of the same sizes, same server, flow by flow"
    )
    print(
        f"  {'case':24}{'chunks':>7} {'MiB':>8}  {'vplane MB/s':>11} {'put s':>6} "
        f"{'read s':>6}  {'raw MB/s':>8} {'put s':>6} {'read s':>6}  {'throughput ratio':>16}"
    )
    for r in result["cases"]:
        t = r["throughput"]
        print(
            f"  {r['case']:24}{t['chunks']:>7} {t['bytes'] / MIB:>8.1f}  "
            f"{num(t['vplane_mb_s'], '.0f', 11)} {t['vplane_put_s']:>6.2f} "
            f"{t['vplane_read_s']:>6.2f}  {num(t['raw_mb_s'], '.0f', 8)} "
            f"{t['raw_put_s']:>6.2f} {t['raw_read_s']:>6.2f}  "
            f"{num(t['throughput_ratio'], '.2f', 16)}"
        )
    t = result["throughput"]
    print(
        f"  {'all':24}{'':>7} {t['bytes'] / MIB:>8.1f}  {num(t['vplane_mb_s'], '.0f', 11)} "
        f"{t['vplane_s']:>13.2f}  {num(t['raw_mb_s'], '.0f', 8)} {t['raw_s']:>13.2f}  "
        f"{num(t['throughput_ratio'], '.2f', 16)}"
    )
    print("  migration wall MB/s (bytes sent / MigrateVm to its end seen, everything included):")
    print(
        "    "
        + ", ".join(
            f"{r['case']} {r['real'].get('bytes', 0) / r['wall_s']['migrate'] / 1e6:.0f}"
            for r in result["cases"]
        )
    )


def targets(result: dict[str, Any]) -> None:
    t = result["targets"]
    print()
    down = t["downtime"]
    shown = ", ".join(f"{c} {num(d, '.1f', 0)}" for c, d in down["by_case"].items())
    if down["by_case"]:
        print(
            f"  downtime <= {down['target_ms']} ms where the model converges: {shown}: "
            f"{met(down['met'])}"
        )
    else:
        print("  downtime: no pre-copy case where the model converges: not measured")
    b = t["bytes"]
    shown = ", ".join(f"{c} {num(x, '.2f', 0)}" for c, x in b["by_case"].items())
    if b["by_case"]:
        print(
            f"  bytes ratio <= {b['target_ratio']} where the model converges: {shown}: "
            f"{met(b['met'])}"
        )
    tp = t["throughput"]
    print(
        f"  throughput ratio {num(tp['ratio'], '.2f', 0)} (target >= {tp['target_ratio']}): "
        f"{met(tp['met'])}"
    )
    limit = result["settings"]["downtime_ms"]
    others = [r for r in result["cases"] if r["mode"] != "precopy" and "downtime_ms" in r["real"]]
    if others:
        shown = ", ".join(
            f"{r['case']} {r['real']['downtime_ms']:.1f}"
            + (" (over)" if r["real"]["downtime_ms"] > limit else "")
            for r in others
        )
        print(f"  downtime ms of the other modes (limit {limit} ms; not a target): {shown}")
    rf = t["remote_faults"]
    if not rf["pairs"]:
        print("  remote faults, hybrid < post-copy: not measured (no post-copy and hybrid pair)")
    for p in rf["pairs"]:
        print(f"  remote faults {p['case']}: hybrid {p['hybrid']}, post-copy {p['postcopy']}")
    if rf["pairs"]:
        verdict = met(rf["met"]) if rf["measured"] else "not measurable (no post-copy faults)"
        print(f"  remote faults, hybrid < post-copy: {verdict}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)

    def listed(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
        return lambda text: [kind(x) for x in text.split(",") if x]

    parser.add_argument(
        "--sizes", type=listed(int), default=[256, 1024], help="pre-copy's, MiB (256,1024)"
    )
    parser.add_argument(
        "--rates", type=listed(str), default=list(RATES), help=f"of {', '.join(RATES)} (all)"
    )
    parser.add_argument(
        "--modes",
        type=listed(MigrationMode),
        default=[MigrationMode.POSTCOPY, MigrationMode.HYBRID],
        help="the other modes, run too (postcopy,hybrid; '' for none)",
    )
    parser.add_argument(
        "--modes-rates",
        type=listed(str),
        default=["below", "near", "above"],
        help="theirs (below,near,above)",
    )
    parser.add_argument("--modes-size", type=int, default=256, help="theirs, MiB (256)")
    parser.add_argument("--mbps", type=float, default=1000.0, help="the link (1000)")
    parser.add_argument("--downtime-ms", type=int, default=300, help="the limit (300)")
    parser.add_argument("--speed", type=float, default=200.0, help="emulated s per wall s")
    parser.add_argument("--tick", type=float, default=0.05, help="the hosts' tick, wall s")
    parser.add_argument("--seed", type=int, default=7, help="the VM's seed (7)")
    parser.add_argument("--timeout", type=float, default=240.0, help="per migration, s")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print JSON too")
    opts = parser.parse_args(argv)
    unknown = {*opts.rates, *opts.modes_rates} - set(RATES)
    if unknown or min([*opts.sizes, opts.modes_size]) < 16:
        parser.error(f"rates of {', '.join(RATES)}; sizes >= 16 MiB")
    opts.modes = [m for m in opts.modes if m is not MigrationMode.PRECOPY]
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    started = time.perf_counter()
    result = on_embedded_nats("vplane-migration-bench-", lambda url: run(url, opts))
    result["settings"] = {
        "mbps": opts.mbps,
        "link_pages_per_s": link_pages_per_s(opts.mbps),
        "downtime_ms": opts.downtime_ms,
        "speed": opts.speed,
        "tick_s": opts.tick,
        "seed": opts.seed,
    }
    result |= summary(result["cases"], opts)
    result["failures"] = failures(result["cases"])
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
