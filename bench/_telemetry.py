"""The telemetry benchmark's parts: the fleet, the timed bus, the raw baseline, the figures.

``telemetry_bench.py`` runs them: it builds the fleet with ``build_fleet``, runs the hosts
service's telemetry loop over a ``TimedNatsBus`` whose ``Recorder`` stamps every tick,
then ``run_raw`` (the same bytes through plain nats-py), and ``figures`` sums both up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import nats
from _common import unique_tag
from nats.js import api

from schemas import Envelope, Message
from schemas.vm import MemoryMode, VmCreated, WorkloadKind
from services.hosts.bootstrap import NAME, host_names, host_shape
from services.hosts.handlers import FleetHolder
from services.hosts.state import evolve
from shared.bus.nats import NatsBus
from shared.settings import Settings

ACK_TIMEOUT = 30.0
ACK_POLL = 0.0005
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
    """Stamps each tick: the loop asks its holder for the tick's emulated time once, as
    every tick starts."""

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

    def tick_started(self, sim_time: float) -> float:
        """Record a tick's start; pass its emulated time through."""
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
        self.sim_time = sim_time
        return sim_time

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


# Both sides


@dataclass
class Stored:
    emitted: int
    stored: int
    pending_acks: int


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
