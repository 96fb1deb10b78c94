"""Telemetry at scale: 1,000 hosts and 10,000 accounting-only VMs in one process, at 1 Hz.

* The fleet: ``HostRegistered`` events shaped as ``services.hosts.bootstrap.host_shape``
  and ``VmCreated`` events (accounting memory mode, 10 VMs per host, the workload kinds
  in turn), folded through ``evolve`` and ``Machine.apply`` as the hosts service's fold
  does, into a ``FleetHolder`` whose ``Machine`` has every host's name. No commands.
* vplane: the service's own ``services.hosts.handlers.telemetry_loop`` against a
  ``NatsBus`` in a namespace of its own, on one embedded nats-server (temporary data
  dir, free loopback port). Each tick it runs ``Machine.tick`` and emits one
  ``HostTelemetry`` per host, each carrying its VMs' ``VmSample`` rows.
* raw: nats-py ``js.publish_async`` of the same number of pre-encoded envelopes (the
  bytes of the run's last tick) per tick, into a stream configured like TELEMETRY.

Per tick it records the compute time (``Machine.tick``), the publish time (wrap, encode
and ``publish_async`` of every host's message), when the acks were back, and how late
the tick started against its schedule. The TELEMETRY stream's message count shows
whether anything was dropped.

    .venv/bin/python bench/telemetry_bench.py [--ticks N] [--hosts N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import pstats
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nats
from _common import to_the_end, unique_tag
from nats.js import api

from schemas import Envelope, Message
from schemas.vm import MemoryMode, VmCreated, WorkloadKind
from services.hosts.bootstrap import NAME, host_names, host_shape
from services.hosts.handlers import FleetHolder, telemetry_loop
from services.hosts.state import evolve
from shared.broker import EmbeddedNats
from shared.bus import subjects
from shared.bus.nats import NatsBus
from shared.bus.protocol import Stream
from shared.logs import configure as configure_logs
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings

ACK_TIMEOUT = 30.0
ACK_POLL = 0.0005
# Time allowed past --budget for the tick that is running when the budget runs out.
OVERRUN = 300.0
KINDS = tuple(WorkloadKind)


@dataclass
class Options:
    hosts: int
    vms_per_host: int
    vm_cpus: int
    vm_mem_mib: int
    ticks: int
    raw_ticks: int
    period: float
    budget: float
    profile: int
    as_json: bool


@dataclass
class Tick:
    """One tick of the loop, in ``time.monotonic()`` seconds."""

    index: int
    due: float
    started: float
    first_emit: float | None = None
    published: float | None = None
    acked: float | None = None
    messages: int = 0
    vm_samples: int = 0

    @property
    def compute_s(self) -> float:
        """The clock read to the first emit: ``Machine.tick`` (and one envelope wrap)."""
        return (self.first_emit or self.started) - self.started

    @property
    def publish_s(self) -> float:
        """First emit to the last emit's return: wrap, encode, ``publish_async`` per host."""
        if self.first_emit is None or self.published is None:
            return 0.0
        return self.published - self.first_emit

    @property
    def ack_s(self) -> float | None:
        """The last emit's return to as many acks back as messages sent up to then."""
        if self.acked is None or self.published is None:
            return None
        return self.acked - self.published

    @property
    def lag_s(self) -> float:
        return self.started - self.due

    @property
    def end(self) -> float:
        return self.published or self.first_emit or self.started


class Enough(Exception):
    """Raised from the clock to end the service's loop once the ticks are done."""


class Recorder:
    """Stamps each tick: the loop reads the clock once as every tick starts."""

    def __init__(self, *, ticks: int, period: float, budget: float, expected: int) -> None:
        self.wanted = ticks
        self.period = period
        self.budget = budget
        self.expected = expected
        self.ticks: list[Tick] = []
        self.anchor = time.monotonic()
        self.started = time.monotonic()
        self.stopped_by_budget = False
        self.sim_time = 0.0

    def clock(self) -> float:
        """The hosts service's clock (emulated seconds since it was built, at speed 1)."""
        now = time.monotonic()
        if len(self.ticks) >= self.wanted:
            raise Enough
        if self.ticks and now - self.anchor > self.budget:
            self.stopped_by_budget = True
            raise Enough
        index = len(self.ticks)
        self.ticks.append(Tick(index, self.anchor + index * self.period, now))
        if index:
            report_tick(self.ticks[index - 1])
        self.sim_time = now - self.started
        return self.sim_time

    @property
    def current(self) -> Tick:
        return self.ticks[-1]


def report_tick(tick: Tick) -> None:
    ack = f"{tick.ack_s * 1000:7.1f}" if tick.ack_s is not None else "    n/a"
    print(
        f"  tick {tick.index:3d}: compute {tick.compute_s * 1000:8.1f} ms  publish "
        f"{tick.publish_s * 1000:7.1f} ms  acks {ack} ms  lag {tick.lag_s * 1000:8.1f} ms  "
        f"({tick.messages} messages, {tick.vm_samples} VM samples)",
        file=sys.stderr,
        flush=True,
    )


class TimedNatsBus(NatsBus):
    """``NatsBus`` whose ``emit`` is stamped; the message itself goes out unchanged."""

    def __init__(self, url: str, namespace: str, recorder: Recorder) -> None:
        super().__init__(url, namespace=namespace, client_name="bench-telemetry")
        self.recorder = recorder
        self._waiters: list[asyncio.Task[None]] = []
        self.emitted = 0

    async def emit(self, env: Envelope[Any]) -> None:
        tick = self.recorder.current
        if tick.first_emit is None:
            tick.first_emit = time.monotonic()
        await super().emit(env)
        tick.published = time.monotonic()
        tick.messages += 1
        tick.vm_samples += len(env.data.vms)
        self.emitted += 1
        if tick.messages == self.recorder.expected:
            self._waiters.append(asyncio.create_task(self._acks_of(tick, self.emitted)))

    async def _acks_of(self, tick: Tick, through: int) -> None:
        """Stamp the tick once as many acks are back as messages were sent up to its end
        (one stream acknowledges in order). It can only notice while the loop is free."""
        # Polled: nats-py only signals when no ack at all is pending.
        while self.emitted - self.js.publish_async_pending() < through:  # noqa: ASYNC110
            await asyncio.sleep(ACK_POLL)
        tick.acked = time.monotonic()

    async def close(self) -> None:
        for task in self._waiters:
            task.cancel()
        await asyncio.gather(*self._waiters, return_exceptions=True)
        await super().close()


# The fleet


@dataclass
class Built:
    holder: FleetHolder
    settings: Settings
    seconds: float
    vms: int


def build_fleet(opts: Options) -> Built:
    """Fold the hosts' and VMs' events as ``services.hosts.bootstrap.build``'s fold does."""
    settings = Settings(hosts=opts.hosts, tick_seconds=opts.period, speed=1.0)
    hosts = host_names(settings)
    holder = FleetHolder(hosts)

    def fold(event: Message) -> None:
        before = holder.fleet
        holder.fleet = evolve(before, event)
        holder.machine.apply(before, event)

    start = time.perf_counter()
    for host in hosts:
        fold(host_shape(host))
    serial = 0
    for host in hosts:
        for _ in range(opts.vms_per_host):
            fold(
                VmCreated(
                    vm=f"vm{serial:06d}",
                    host=host,
                    cpu=opts.vm_cpus,
                    mem_mib=opts.vm_mem_mib,
                    priority="high" if serial % 4 == 0 else "low",
                    powered_on=True,
                    workload=KINDS[serial % len(KINDS)],
                    memory_mode=MemoryMode.ACCOUNTING,
                    seed=serial + 1,
                )
            )
            serial += 1
    return Built(holder, settings, time.perf_counter() - start, serial)


# vplane's side


@dataclass
class Stored:
    emitted: int
    stored: int
    pending_acks: int


@dataclass
class VplaneRun:
    recorder: Recorder
    stored: Stored
    # The TELEMETRY stream as NatsBus.start created it; the raw side copies it.
    config: api.StreamConfig
    profile: str


async def run_vplane(url: str, built: Built, opts: Options) -> VplaneRun:
    """The hosts service's telemetry loop, as its runtime runs it, for the wanted ticks."""
    settings, holder = built.settings, built.holder
    recorder = Recorder(
        ticks=opts.ticks, period=opts.period, budget=opts.budget, expected=opts.hosts
    )
    namespace = f"benchtel{unique_tag()}"
    bus = TimedNatsBus(url, namespace, recorder)
    runtime = Runtime(ServiceDefinition(name=NAME, clock=recorder.clock), bus, "bench")
    profiler = cProfile.Profile() if opts.profile else None
    try:
        await bus.start()

        async def drive() -> None:
            # telemetry_loop takes its schedule's start as it is entered, right after this.
            recorder.anchor = time.monotonic()
            with contextlib.suppress(Enough):
                await telemetry_loop(runtime, holder, settings.tick_seconds, settings.speed)

        if profiler is not None:
            profiler.enable()
        try:
            await asyncio.wait_for(drive(), opts.budget + OVERRUN)
        finally:
            if profiler is not None:
                profiler.disable()
        report_tick(recorder.current)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(bus.js.publish_async_completed(), ACK_TIMEOUT)
        jsm = bus.nc.jsm()
        stream = await jsm.find_stream_name_by_subject(
            subjects.stream_subject(namespace, Stream.TELEMETRY, ">")
        )
        info = await jsm.stream_info(stream)
        stored = Stored(
            emitted=sum(t.messages for t in recorder.ticks),
            stored=int(info.state.messages),
            pending_acks=bus.js.publish_async_pending(),
        )
    finally:
        await to_the_end(bus.close)
    return VplaneRun(recorder, stored, info.config, profile_text(profiler, opts.profile))


def profile_text(profiler: cProfile.Profile | None, lines: int) -> str:
    if profiler is None:
        return ""
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


# raw nats-py's side


@dataclass
class RawTick:
    publish_s: float
    ack_s: float


def telemetry_payloads(holder: FleetHolder, sim_time: float) -> list[tuple[str, bytes]]:
    """The last tick's samples as the loop sends them: (host, encoded envelope)."""
    return [
        (host, Envelope.wrap(data, producer=NAME, sim_time=sim_time).encode())
        for host, data in sorted(holder.samples.items())
    ]


async def run_raw(
    url: str,
    like: api.StreamConfig,
    payloads: Sequence[tuple[str, bytes]],
    ticks: int,
    period: float,
) -> tuple[list[RawTick], Stored]:
    """The same messages, pre-encoded, with ``js.publish_async`` once per tick."""
    prefix = f"benchraw{unique_tag()}"
    # The stream vplane's bus created for its telemetry, under another name and subjects.
    name = f"{prefix.upper()}_TELEMETRY"
    config = replace(like, name=name, subjects=[f"{prefix}.tel.>"])
    items = [(f"{prefix}.tel.host.{host}", data) for host, data in payloads]
    nc = await nats.connect(url, name="bench-telemetry-raw", connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        await nc.jsm().add_stream(config)
        # One untimed tick first: nats-py sets up its reply inbox on the first publish_async.
        for subject, data in items:
            await js.publish_async(subject, data)
        await asyncio.wait_for(js.publish_async_completed(), ACK_TIMEOUT)
        out: list[RawTick] = []
        anchor = time.monotonic() + period
        for n in range(ticks):
            await asyncio.sleep(max(0.0, anchor + n * period - time.monotonic()))
            start = time.monotonic()
            for subject, data in items:
                await js.publish_async(subject, data)
            published = time.monotonic()
            await asyncio.wait_for(js.publish_async_completed(), ACK_TIMEOUT)
            out.append(RawTick(published - start, time.monotonic() - published))
        info = await nc.jsm().stream_info(name)
        stored = Stored(
            emitted=len(items) * (ticks + 1),
            stored=int(info.state.messages),
            pending_acks=js.publish_async_pending(),
        )
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    return out, stored


# Figures


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def spread_ms(values: Sequence[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 50) * 1000, "max_ms": max(values, default=math.nan) * 1000}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def figures(
    opts: Options,
    built: Built,
    rss_after_build: float,
    recorder: Recorder,
    stored: Stored,
    raw: list[RawTick],
    raw_stored: Stored,
    payloads: Sequence[tuple[str, bytes]],
) -> dict[str, Any]:
    ticks = recorder.ticks
    period = opts.period
    finished = [t.end <= t.due + period for t in ticks]
    last_end = max(t.end for t in ticks)
    elapsed = max(last_end, recorder.anchor + len(ticks) * period) - recorder.anchor
    messages = sum(t.messages for t in ticks)
    samples = sum(t.vm_samples for t in ticks)
    acks = [t.ack_s for t in ticks if t.ack_s is not None]
    sizes = [len(data) for _host, data in payloads]
    vp_publish = [t.publish_s for t in ticks]
    raw_publish = [r.publish_s for r in raw]
    return {
        "hosts": opts.hosts,
        "vms": built.vms,
        "vms_per_host": opts.vms_per_host,
        "vm_cpus": opts.vm_cpus,
        "vm_mem_mib": opts.vm_mem_mib,
        "memory_mode": MemoryMode.ACCOUNTING.value,
        "workloads": [k.value for k in KINDS],
        "period_s": period,
        "ticks_wanted": opts.ticks,
        "ticks_run": len(ticks),
        "stopped_by_budget": recorder.stopped_by_budget,
        "budget_s": opts.budget,
        "build_seconds": built.seconds,
        "rss_after_build_mib": rss_after_build,
        "rss_peak_mib": peak_rss_mib(),
        "target": {
            "host_msgs_per_s": opts.hosts / period,
            "vm_samples_per_s": built.vms / period,
        },
        "achieved": {
            "host_msgs_per_s": messages / elapsed,
            "vm_samples_per_s": samples / elapsed,
            "elapsed_s": elapsed,
        },
        "compute": spread_ms([t.compute_s for t in ticks]),
        "first_tick_compute_ms": ticks[0].compute_s * 1000,
        "publish": spread_ms(vp_publish),
        "acks": spread_ms(acks) | {"ticks_acked": len(acks)},
        "lag": spread_ms([t.lag_s for t in ticks]),
        "keeps_up": all(finished),
        "ticks_finished_in_time": sum(finished),
        "stored": asdict(stored),
        "payload_bytes": {
            "mean": sum(sizes) / len(sizes) if sizes else 0,
            "min": min(sizes, default=0),
            "max": max(sizes, default=0),
            "per_tick": sum(sizes),
        },
        "raw": {
            "ticks": len(raw),
            "publish": spread_ms(raw_publish),
            "acks": spread_ms([r.ack_s for r in raw]),
            "stored": asdict(raw_stored),
        },
        "publish_ratio_p50": pct(vp_publish, 50) / pct(raw_publish, 50),
        "per_tick": [
            {
                "tick": t.index,
                "compute_ms": t.compute_s * 1000,
                "publish_ms": t.publish_s * 1000,
                "ack_ms": None if t.ack_s is None else t.ack_s * 1000,
                "lag_ms": t.lag_s * 1000,
                "messages": t.messages,
                "vm_samples": t.vm_samples,
                "finished_in_time": ok,
            }
            for t, ok in zip(ticks, finished, strict=True)
        ],
    }


def report(r: dict[str, Any], url: str) -> None:
    tgt, got = r["target"], r["achieved"]
    ran = f"{r['ticks_run']} of {r['ticks_wanted']} ticks"
    if r["stopped_by_budget"]:
        ran += f" (stopped at the {r['budget_s']:g} s --budget)"
    print(
        f"== telemetry: {r['hosts']} hosts, {r['vms']} accounting-only VMs in one process "
        f"({r['vms_per_host']} per host, {r['vm_cpus']} vCPU, {r['vm_mem_mib']} MiB, "
        f"{'/'.join(r['workloads'])})"
    )
    print(f"nats-server at {url}, TELEMETRY in memory; a tick every {r['period_s']:g} s, {ran}")
    print(
        f"fleet folded through evolve + Machine.apply in {r['build_seconds']:.1f} s; "
        f"process memory {r['rss_after_build_mib'] / 1024:.1f} GiB after it, "
        f"peak {r['rss_peak_mib'] / 1024:.1f} GiB"
    )
    print()
    print(f"  {'':<34}{'target':>10}  {'achieved':>10}")
    print(
        f"  {'host messages/s':<34}{tgt['host_msgs_per_s']:10.0f}  {got['host_msgs_per_s']:10.0f}"
    )
    print(f"  {'VM samples/s':<34}{tgt['vm_samples_per_s']:10.0f}  {got['vm_samples_per_s']:10.0f}")
    print()
    print(f"  {'per tick':<34}{'p50 ms':>10}  {'max ms':>10}")
    rows = (
        ("compute (Machine.tick)", r["compute"]),
        ("publish (wrap+encode+publish_async)", r["publish"]),
        ("acks back, after the publish", r["acks"]),
        ("lag (start behind schedule)", r["lag"]),
    )
    for label, cell in rows:
        print(f"  {label:<34}{cell['p50_ms']:10.1f}  {cell['max_ms']:10.1f}")
    print(f"  {'first tick compute (builds arrays)':<34}{r['first_tick_compute_ms']:10.1f}")
    print()
    keeps = "yes" if r["keeps_up"] else "no"
    print(
        f"  keeps up at {1 / r['period_s']:g} Hz: {keeps} ({r['ticks_finished_in_time']} of "
        f"{r['ticks_run']} ticks finished before the next was due)"
    )
    st = r["stored"]
    dropped = st["emitted"] - st["stored"]
    verdict = "nothing dropped" if dropped == 0 else f"{dropped} MISSING"
    print(
        f"  stored in TELEMETRY: {st['stored']} of {st['emitted']} emitted ({verdict}"
        f"{', ' + str(st['pending_acks']) + ' acks pending' if st['pending_acks'] else ''})"
    )
    print()
    size, raw = r["payload_bytes"], r["raw"]
    print(
        f"publish per tick, vplane next to raw nats-py: {r['hosts']} HostTelemetry envelopes, "
        f"{size['mean']:.0f} bytes mean ({size['per_tick'] / 1024:.0f} KiB a tick)"
    )
    print(
        f"  {'raw nats-py (pre-encoded)':<34}p50 {raw['publish']['p50_ms']:8.1f} ms   "
        f"max {raw['publish']['max_ms']:8.1f} ms   acks p50 {raw['acks']['p50_ms']:6.1f} ms   "
        f"({raw['ticks']} ticks after a warm-up, "
        f"stored {raw['stored']['stored']} of {raw['stored']['emitted']})"
    )
    print(
        f"  {'vplane telemetry_loop':<34}p50 {r['publish']['p50_ms']:8.1f} ms   "
        f"max {r['publish']['max_ms']:8.1f} ms   acks p50 {r['acks']['p50_ms']:6.1f} ms"
    )
    print(f"  {'ratio vplane / raw (p50)':<34}{r['publish_ratio_p50']:8.2f}")


# Running


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


async def _cancelled_by_sigterm(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run with SIGTERM cancelling the run, so every ``finally`` cleans up in order."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _terminate)


async def measure(url: str, built: Built, opts: Options, rss: float) -> dict[str, Any]:
    vp = await run_vplane(url, built, opts)
    if vp.profile:
        print(vp.profile, file=sys.stderr)
    payloads = telemetry_payloads(built.holder, vp.recorder.sim_time)
    print(f"raw nats-py: {opts.raw_ticks} ticks", file=sys.stderr, flush=True)
    raw, raw_stored = await run_raw(url, vp.config, payloads, opts.raw_ticks, opts.period)
    return figures(opts, built, rss, vp.recorder, vp.stored, raw, raw_stored, payloads)


def run(opts: Options) -> tuple[dict[str, Any], str]:
    print(
        f"folding {opts.hosts} hosts and {opts.hosts * opts.vms_per_host} VMs ...",
        file=sys.stderr,
        flush=True,
    )
    built = build_fleet(opts)
    rss = peak_rss_mib()
    print(
        f"folded in {built.seconds:.1f} s ({rss / 1024:.1f} GiB); the telemetry loop runs "
        f"{opts.ticks} ticks, at most {opts.budget:g} s",
        file=sys.stderr,
        flush=True,
    )
    with (
        tempfile.TemporaryDirectory(prefix="vplane-bench-") as tmp,
        EmbeddedNats(Path(tmp)) as broker,
    ):
        try:
            result = asyncio.run(_cancelled_by_sigterm(measure(broker.url, built, opts, rss)))
        except asyncio.CancelledError:
            raise SystemExit(128 + signal.SIGTERM) from None
        return result, broker.url


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1_000, help="emulated hosts")
    parser.add_argument("--vms-per-host", type=int, default=10, help="VMs on each host")
    parser.add_argument("--vm-cpus", type=int, default=2, help="vCPUs of each VM")
    parser.add_argument(
        "--vm-mem-mib",
        type=int,
        default=128,
        help="memory of each VM; accounting-only VMs still keep per-page tables",
    )
    parser.add_argument("--ticks", type=int, default=15, help="ticks of the telemetry loop")
    parser.add_argument("--raw-ticks", type=int, default=5, help="ticks of the raw baseline")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per tick")
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="no tick starts after this many seconds of the loop (at least one runs)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="cProfile the loop; print its N top functions to stderr",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    if min(ns.hosts, ns.vms_per_host, ns.vm_cpus, ns.ticks, ns.raw_ticks) < 1:
        parser.error("--hosts, --vms-per-host, --vm-cpus, --ticks and --raw-ticks must be >= 1")
    if ns.hosts > 10_000:
        parser.error("--hosts is at most 10000 (the hosts service's limit)")
    if ns.vm_mem_mib < 16:
        parser.error("--vm-mem-mib must be at least 16")
    if ns.period <= 0 or ns.budget <= 0 or ns.profile < 0:
        parser.error("--period and --budget must be positive, --profile not negative")
    return Options(
        hosts=ns.hosts,
        vms_per_host=ns.vms_per_host,
        vm_cpus=ns.vm_cpus,
        vm_mem_mib=ns.vm_mem_mib,
        ticks=ns.ticks,
        raw_ticks=ns.raw_ticks,
        period=ns.period,
        budget=ns.budget,
        profile=ns.profile,
        as_json=ns.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the server and its data dir go away.
    signal.signal(signal.SIGTERM, _terminate)
    result, url = run(opts)
    report(result, url)
    if opts.as_json:
        print(json.dumps({"url": url} | result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
