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
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import cancelled_by_sigterm, terminate, to_the_end, unique_tag
from _telemetry import (
    ACK_TIMEOUT,
    Built,
    Enough,
    Options,
    Recorder,
    Stored,
    TimedNatsBus,
    build_fleet,
    figures,
    peak_rss_mib,
    report_tick,
    run_raw,
    telemetry_payloads,
)
from nats.js import api

from services.hosts.bootstrap import NAME
from services.hosts.handlers import telemetry_step
from shared.broker import EmbeddedNats
from shared.bus import subjects
from shared.bus.protocol import Stream
from shared.logs import configure as configure_logs
from shared.runtime import Runtime, ServiceDefinition

# Time allowed past --budget for the tick that is running when the budget runs out.
OVERRUN = 300.0


# vplane's side


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
    tick_time = holder.sim_time
    # The loop asks the holder for each tick's emulated time as the tick starts.
    holder.sim_time = lambda step: recorder.tick_started(tick_time(step))  # type: ignore[method-assign]
    # Telemetry alone is measured: no clock leases in the log.
    holder.leased_until = math.inf
    runtime = Runtime(ServiceDefinition(name=NAME, clock=holder.clock), bus, "bench")
    profiler = cProfile.Profile() if opts.profile else None
    try:
        await bus.start()

        async def drive() -> None:
            # The telemetry step as the runtime carries it out, on a schedule that does
            # not drift (the service's loop sleeps a period after each step).
            recorder.anchor = time.monotonic()
            step = settings.tick_seconds * settings.speed
            with contextlib.suppress(Enough):
                while True:
                    await runtime.carry_out(telemetry_step(holder, step))
                    next_at = recorder.anchor + holder.tick * settings.tick_seconds
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

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
            result = asyncio.run(cancelled_by_sigterm(measure(broker.url, built, opts, rss)))
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
    signal.signal(signal.SIGTERM, terminate)
    result, url = run(opts)
    report(result, url)
    if opts.as_json:
        print(json.dumps({"url": url} | result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
