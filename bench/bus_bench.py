"""Throughput and latency of vplane's NATS bus next to raw nats-py JetStream.

One embedded nats-server (temporary data dir, free loopback port, ``sync_interval:
always``) serves both sides in turn:

* raw nats-py: ``js.publish_async`` with ``Nats-Msg-Id`` headers, a durable pull
  consumer doing ``fetch(batch)`` and ``ack()``; the payload is the bytes of an
  encoded ``VmCreated`` envelope, so both sides move the same number of bytes.
* vplane: ``NatsBus.append_many`` of distinct ``VmCreated`` envelopes, consumed by
  ``NatsBus.consume`` (decode, pydantic validation, dispatch, ack).

Both publish in chunks with every chunk's acknowledgements in flight together, while
their consumer runs concurrently; end to end is first publish to the last message
handled. Latency is then measured at half of vplane's peak, paced in 2 ms ticks.

    .venv/bin/python bench/bus_bench.py [--events N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js import api

from schemas import Envelope, Message
from schemas.vm import VmCreated
from shared.broker import EmbeddedNats
from shared.bus.nats import NatsBus
from shared.bus.protocol import ConsumerSpec, Delivery, Stream, Subscription
from shared.logs import configure as configure_logs

RAW_STREAM = "BENCHRAW"
RAW_PREFIX = "benchraw.evt"
RAW_DURABLE = "bench-raw"
VPLANE_DURABLE = "bench-vplane"
TICK = 0.002
WAIT_LIMIT = 120.0
POLL = 0.25

SendBatch = Callable[[int, int], Coroutine[Any, Any, None]]
Revive = Callable[[], Awaitable[None]]


@dataclass
class Throughput:
    """One side's throughput run: ``events`` published and consumed concurrently."""

    events: int
    seconds: float
    publish_seconds: float
    # CPU this Python process spent (both directions, one event loop) during the run.
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def publish_rate(self) -> float:
        return self.events / self.publish_seconds

    @property
    def cpu_us_per_msg(self) -> float:
        return self.cpu_seconds / self.events * 1e6


@dataclass
class Latency:
    count: int
    offered_msgs_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float


class Tally:
    """Counts handled messages and wakes the waiter when ``target`` is reached."""

    def __init__(self) -> None:
        self.count = 0
        self.target = math.inf
        self.done = asyncio.Event()
        self.latencies: list[float] = []

    def expect(self, more: int) -> None:
        self.target = self.count + more
        self.done.clear()
        self.latencies = []

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()

    async def wait(self, what: str, revive: Revive | None = None) -> None:
        """Wait for the target; ``revive`` is polled to restart a consumer that died."""
        deadline = time.monotonic() + WAIT_LIMIT
        while not self.done.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"{what}: handled {self.count} of {self.target} in {WAIT_LIMIT}s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), min(left, POLL))
            if revive is not None and not self.done.is_set():
                await revive()


def _vm_envelope(tag: str, i: int) -> Envelope[VmCreated]:
    data = VmCreated(
        vm=f"{tag}-{i:06d}", host="h1", cpu=2, mem_mib=2048, priority="low", powered_on=True
    )
    return Envelope.wrap(data, producer="bench")


def _chunks(total: int, size: int) -> list[range]:
    return [range(i, min(i + size, total)) for i in range(0, total, size)]


class RawSide:
    """Plain nats-py JetStream, configured like vplane's event stream and consumers."""

    def __init__(self, url: str, payload: bytes, *, chunk: int, batch: int) -> None:
        self.url = url
        self.payload = payload
        self.chunk = chunk
        self.batch = batch
        self.tally = Tally()
        # Msg-Id -> perf_counter() at publish, only while measuring latency.
        self.stamps: dict[str, float] = {}
        self._nc: Any = None
        self._js: Any = None
        self._task: asyncio.Task[None] | None = None
        self._serial = 0

    async def start(self) -> None:
        self._nc = await nats.connect(self.url, name="bench-raw", connect_timeout=2)
        self._js = self._nc.jetstream(timeout=10)
        jsm = self._nc.jsm()
        await jsm.add_stream(
            api.StreamConfig(
                name=RAW_STREAM,
                subjects=[f"{RAW_PREFIX}.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        await jsm.add_consumer(
            RAW_STREAM,
            api.ConsumerConfig(
                durable_name=RAW_DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=-1,
                max_ack_pending=max(self.batch * 4, 1000),
                filter_subjects=[f"{RAW_PREFIX}.vm.>"],
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        sub = await self._js.pull_subscribe_bind(durable=RAW_DURABLE, stream=RAW_STREAM)
        self._task = asyncio.create_task(self._consume(sub), name="bench-raw-consumer")

    async def _consume(self, sub: Any) -> None:
        tally, stamps = self.tally, self.stamps
        while True:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except TimeoutError:
                # nats-py raises its own TimeoutError, FetchTimeoutError, and on some
                # paths a bare asyncio.TimeoutError: all are TimeoutError on 3.11+.
                continue
            for msg in msgs:
                if stamps:
                    sent = stamps.pop(msg.headers[api.Header.MSG_ID], None)
                    if sent is not None:
                        tally.latencies.append(time.perf_counter() - sent)
                await msg.ack()
                tally.hit()

    def prepare(self, count: int) -> list[tuple[str, str]]:
        """Distinct subjects (one per aggregate, as vplane has) and uuid message ids."""
        self._serial += 1
        return [
            (f"{RAW_PREFIX}.vm.r{self._serial}-{i:06d}", str(uuid.uuid4())) for i in range(count)
        ]

    async def publish(self, items: Sequence[tuple[str, str]]) -> None:
        js, payload = self._js, self.payload
        for part in _chunks(len(items), self.chunk):
            futures = [
                await js.publish_async(
                    items[i][0], payload, headers={api.Header.MSG_ID: items[i][1]}
                )
                for i in part
            ]
            await asyncio.gather(*futures)

    def sender(self, items: Sequence[tuple[str, str]]) -> SendBatch:
        async def send(first: int, count: int) -> None:
            js, payload, stamps = self._js, self.payload, self.stamps
            now = time.perf_counter()
            futures = []
            for subject, msg_id in items[first : first + count]:
                stamps[msg_id] = now
                futures.append(
                    await js.publish_async(subject, payload, headers={api.Header.MSG_ID: msg_id})
                )
            await asyncio.gather(*futures)

        return send

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


class VplaneSide:
    """vplane's ``NatsBus`` in a namespace of its own."""

    def __init__(self, url: str, *, chunk: int, batch: int) -> None:
        self.bus = NatsBus(url, namespace=f"bench{uuid.uuid4().hex[:8]}", client_name="bench")
        self.chunk = chunk
        self.batch = batch
        self.tally = Tally()
        self.spec = ConsumerSpec(
            name=VPLANE_DURABLE, stream=Stream.EVENTS, filters=("vm.>",), batch=batch
        )
        # Consumer loops that died with an exception and were started again.
        self.restarts: list[str] = []
        self._sub: Subscription | None = None
        self._serial = 0

    async def start(self) -> None:
        await self.bus.start()
        self._sub = await self.bus.consume(self.spec, self._handle)

    def _died(self) -> BaseException | None:
        """The exception that ended the consumer's loop (a private task), if it ended."""
        task = getattr(self._sub, "_task", None)
        if isinstance(task, asyncio.Task) and task.done() and not task.cancelled():
            return task.exception()
        return None

    async def revive(self) -> None:
        err = self._died()
        if err is not None:
            self.restarts.append(f"{type(err).__module__}.{type(err).__qualname__}: {err!r}")
            self._sub = await self.bus.consume(self.spec, self._handle)

    async def _handle(self, env: Envelope[Message], _delivery: Delivery) -> None:
        # The latency run carries its append time in sim_time; the others leave it 0.
        if env.sim_time:
            self.tally.latencies.append(time.perf_counter() - env.sim_time)
        self.tally.hit()

    def prepare(self, count: int) -> list[Envelope[VmCreated]]:
        self._serial += 1
        return [_vm_envelope(f"v{self._serial}", i) for i in range(count)]

    async def publish(self, envs: Sequence[Envelope[VmCreated]]) -> None:
        for part in _chunks(len(envs), self.chunk):
            await self.bus.append_many([envs[i] for i in part])

    def sender(self, envs: Sequence[Envelope[VmCreated]]) -> SendBatch:
        async def send(first: int, count: int) -> None:
            now = time.perf_counter()
            stamped: list[Envelope[Any]] = [
                e.model_copy(update={"sim_time": now}) for e in envs[first : first + count]
            ]
            await self.bus.append_many(stamped)

        return send

    async def close(self) -> None:
        try:
            await self.bus.close()
        except Exception:
            # A dead consumer loop re-raises its error from stop(); finish the job.
            if self.restarts or self._died() is not None:
                with contextlib.suppress(Exception):
                    await self.bus.nc.close()
            else:
                raise


async def _throughput(
    tally: Tally,
    publish: Callable[[], Coroutine[Any, Any, None]],
    count: int,
    *,
    what: str,
    revive: Revive | None = None,
) -> Throughput:
    """Publish ``count`` messages while the consumer runs; time until the last is handled."""
    tally.expect(count)
    cpu = time.process_time()
    start = time.perf_counter()
    publisher = asyncio.create_task(publish())
    published = 0.0

    def _stamp(_: asyncio.Task[None]) -> None:
        nonlocal published
        published = time.perf_counter() - start

    publisher.add_done_callback(_stamp)
    try:
        await tally.wait(what, revive)
        handled = time.perf_counter() - start
        cpu = time.process_time() - cpu
        await publisher
    finally:
        if not publisher.done():
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher
    return Throughput(count, handled, published, cpu)


async def _paced(
    tally: Tally,
    send: SendBatch,
    rate: float,
    total: int,
    *,
    what: str,
    revive: Revive | None = None,
) -> Latency:
    """Send ``total`` messages at ``rate``, one batch per tick, without waiting on acks."""
    tally.expect(total)
    sends: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    sent = 0
    tick = 0
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            sends.append(asyncio.create_task(send(sent, due - sent)))
            sent = due
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * TICK - time.perf_counter()))
    offered = total / (time.perf_counter() - start)
    await asyncio.gather(*sends)
    await tally.wait(what, revive)
    return _summarise(tally.latencies, offered)


def _summarise(samples: list[float], offered: float) -> Latency:
    ordered = sorted(samples)
    if not ordered:
        return Latency(0, offered, math.nan, math.nan, math.nan)

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    return Latency(len(ordered), offered, pct(50), pct(99), ordered[-1] * 1000)


@dataclass
class Options:
    events: int
    warmup: int
    chunk: int
    batch: int
    latency_seconds: float
    latency_max: int
    as_json: bool


async def run(url: str, opts: Options) -> dict[str, Any]:
    sample = _vm_envelope("v0", 0).encode()
    raw = RawSide(url, sample, chunk=opts.chunk, batch=opts.batch)
    vplane = VplaneSide(url, chunk=opts.chunk, batch=opts.batch)
    # Everything is built before any consumer runs, so no consumer idles on a busy loop.
    raw_warm, raw_items, raw_lat_items = (
        raw.prepare(n) for n in (opts.warmup, opts.events, opts.latency_max)
    )
    vp_warm, vp_envs, vp_lat_envs = (
        vplane.prepare(n) for n in (opts.warmup, opts.events, opts.latency_max)
    )
    try:
        await raw.start()
        # The warm-up runs open connections, streams, consumers and pydantic's caches.
        await _throughput(raw.tally, lambda: raw.publish(raw_warm), opts.warmup, what="raw warm-up")
        raw_tp = await _throughput(
            raw.tally, lambda: raw.publish(raw_items), opts.events, what="raw throughput"
        )

        await vplane.start()
        revive = vplane.revive
        await _throughput(
            vplane.tally,
            lambda: vplane.publish(vp_warm),
            opts.warmup,
            what="vplane warm-up",
            revive=revive,
        )
        vp_tp = await _throughput(
            vplane.tally,
            lambda: vplane.publish(vp_envs),
            opts.events,
            what="vplane throughput",
            revive=revive,
        )
        rate = vp_tp.rate / 2
        total = max(1, min(opts.latency_max, int(rate * opts.latency_seconds)))
        vp_lat = await _paced(
            vplane.tally,
            vplane.sender(vp_lat_envs),
            rate,
            total,
            what="vplane latency",
            revive=revive,
        )
        await vplane.close()

        raw_lat = await _paced(
            raw.tally, raw.sender(raw_lat_items), rate, total, what="raw latency"
        )
    finally:
        await vplane.close()
        await raw.close()

    return {
        "events": opts.events,
        "payload_bytes": len(sample),
        "chunk": opts.chunk,
        "fetch_batch": opts.batch,
        "raw": {
            "e2e_msgs_per_s": raw_tp.rate,
            "publish_msgs_per_s": raw_tp.publish_rate,
            "seconds": raw_tp.seconds,
            "client_cpu_us_per_msg": raw_tp.cpu_us_per_msg,
        },
        "vplane": {
            "e2e_msgs_per_s": vp_tp.rate,
            "publish_msgs_per_s": vp_tp.publish_rate,
            "seconds": vp_tp.seconds,
            "client_cpu_us_per_msg": vp_tp.cpu_us_per_msg,
            "consumer_restarts": vplane.restarts,
        },
        "ratio": vp_tp.rate / raw_tp.rate,
        "target_ratio": 0.5,
        "latency": {
            "rate_msgs_per_s": rate,
            "count": total,
            "raw": asdict(raw_lat),
            "vplane": asdict(vp_lat),
        },
    }


def report(result: dict[str, Any], url: str) -> None:
    raw, vp, lat = result["raw"], result["vplane"], result["latency"]
    print(
        f"vplane bus benchmark: {result['events']} events of {result['payload_bytes']} bytes, "
        f"nats-server at {url} (sync_interval: always)"
    )
    print(
        f"chunks of {result['chunk']} in flight, pull fetch batch {result['fetch_batch']}, "
        "consumer running during publish"
    )
    print()
    print("throughput, first publish to last message handled and acked:")
    print(
        f"  raw nats-py   : {raw['e2e_msgs_per_s']:8.0f} msg/s   "
        f"(publish {raw['publish_msgs_per_s']:6.0f} msg/s, "
        f"client CPU {raw['client_cpu_us_per_msg']:4.0f} us/msg)"
    )
    print(
        f"  vplane bus    : {vp['e2e_msgs_per_s']:8.0f} msg/s   "
        f"(append  {vp['publish_msgs_per_s']:6.0f} msg/s, "
        f"client CPU {vp['client_cpu_us_per_msg']:4.0f} us/msg)"
    )
    print(f"  ratio         : {result['ratio']:8.2f}         (target >= {result['target_ratio']})")
    for died in vp["consumer_restarts"]:
        print(f"  WARNING       : vplane's consumer loop died and was restarted: {died}")
    print()
    print(
        f"latency, append to handler, at {lat['rate_msgs_per_s']:.0f} msg/s "
        f"(half vplane's peak), {lat['count']} messages paced in {TICK * 1000:.0f} ms ticks:"
    )
    for label, key in (("raw nats-py   ", "raw"), ("vplane bus    ", "vplane")):
        row = lat[key]
        print(
            f"  {label}: p50 {row['p50_ms']:7.2f} ms   p99 {row['p99_ms']:7.2f} ms   "
            f"max {row['max_ms']:7.2f} ms   (sent at {row['offered_msgs_per_s']:.0f} msg/s)"
        )


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per throughput run")
    parser.add_argument("--warmup", type=int, default=1_000, help="events per warm-up run")
    parser.add_argument("--chunk", type=int, default=500, help="appends in flight together")
    parser.add_argument("--batch", type=int, default=256, help="pull consumer fetch batch")
    parser.add_argument(
        "--latency-seconds", type=float, default=3.0, help="length of the paced latency run"
    )
    parser.add_argument(
        "--latency-max", type=int, default=10_000, help="most messages in the latency run"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    if min(ns.events, ns.warmup, ns.chunk, ns.batch, ns.latency_max) < 1:
        parser.error("--events, --warmup, --chunk, --batch and --latency-max must be positive")
    if ns.latency_seconds <= 0:
        parser.error("--latency-seconds must be positive")
    return Options(
        events=ns.events,
        warmup=ns.warmup,
        chunk=ns.chunk,
        batch=ns.batch,
        latency_seconds=ns.latency_seconds,
        latency_max=ns.latency_max,
        as_json=ns.json,
    )


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the broker below is always stopped.
    signal.signal(signal.SIGTERM, _terminate)
    with (
        tempfile.TemporaryDirectory(prefix="vplane-bench-") as tmp,
        EmbeddedNats(Path(tmp)) as broker,
    ):
        result = asyncio.run(run(broker.url, opts))
    report(result, broker.url)
    if opts.as_json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
