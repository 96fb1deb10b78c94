"""What the bus benchmarks share: the timed runs, the tallies, and vplane's side.

Each broker module supplies a raw-client side and a vplane side; ``run_pair`` measures
both the same way (warm-up, throughput with the consumer running, paced latency at
half vplane's peak) and returns the figures as a JSON-ready dict. ``terminate`` and
``cancelled_by_sigterm`` let SIGTERM unwind any benchmark like Ctrl-C does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from schemas import Envelope, Message
from schemas.vm import VmCreated
from shared.broker import EmbeddedNats
from shared.bus.protocol import Bus, ConsumerSpec, Delivery, Stream, Subscription

TICK = 0.002
# The latency runs alternate between raw and vplane in this many slices.
LATENCY_SLICES = 6
WAIT_LIMIT = 120.0
POLL = 0.25
TARGET_RATIO = 0.5
# vplane's p99 latency over raw's, in the same run: at most this.
TARGET_LATENCY_RATIO = 3.0
VPLANE_DURABLE = "bench-vplane"

SendBatch = Callable[[int, int], Coroutine[Any, Any, None]]
Revive = Callable[[], Awaitable[None]]


@dataclass
class Settings:
    """What one broker's runs are asked to do."""

    events: int
    warmup: int
    chunk: int
    batch: int
    latency_seconds: float
    latency_max: int


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


class Side(Protocol):
    """A publisher and a consumer on one broker; items come from ``prepare``."""

    tally: Tally

    async def start(self) -> None: ...

    def prepare(self, count: int) -> Sequence[Any]: ...

    async def publish(self, items: Sequence[Any]) -> None: ...

    def sender(self, items: Sequence[Any]) -> SendBatch: ...

    async def close(self) -> None: ...


def vm_envelope(tag: str, i: int) -> Envelope[VmCreated]:
    data = VmCreated(
        vm=f"{tag}-{i:06d}", host="h1", cpu=2, mem_mib=2048, priority="low", powered_on=True
    )
    return Envelope.wrap(data, producer="bench")


def chunks(total: int, size: int) -> list[range]:
    return [range(i, min(i + size, total)) for i in range(0, total, size)]


def unique_tag() -> str:
    return uuid.uuid4().hex[:8]


class VplaneSide:
    """vplane's bus in a namespace of its own, consumed through ``Bus.consume``."""

    def __init__(self, bus: Bus, *, chunk: int, batch: int) -> None:
        self.bus = bus
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

    def died(self) -> BaseException | None:
        """The exception that ended the consumer's loop (a private task), if it ended."""
        task = getattr(self._sub, "_task", None)
        if isinstance(task, asyncio.Task) and task.done() and not task.cancelled():
            return task.exception()
        return None

    async def revive(self) -> None:
        err = self.died()
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
        return [vm_envelope(f"v{self._serial}", i) for i in range(count)]

    async def publish(self, envs: Sequence[Envelope[VmCreated]]) -> None:
        for part in chunks(len(envs), self.chunk):
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
        await self.bus.close()


async def measure_throughput(
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


async def paced(
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
    try:
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                sends.append(asyncio.create_task(send(sent, due - sent)))
                sent = due
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * TICK - time.perf_counter()))
        offered = total / (time.perf_counter() - start)
        await asyncio.gather(*sends)
    finally:
        # On an error or a cancel, no send is left running (or failing unseen).
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
    await tally.wait(what, revive)
    return summarise(tally.latencies, offered)


async def interleaved(
    sides: Sequence[tuple[str, Side, Sequence[Any], Revive | None]], rate: float
) -> dict[str, Latency]:
    """Every side's latency run in alternating slices, each side first in turn. On a
    shared machine the load changes within seconds: run one after the other, the runs
    would meet different machines (and vplane's would come straight after its own
    throughput run, with the broker still writing it out)."""
    total = len(sides[0][2])
    samples: dict[str, list[float]] = {name: [] for name, *_ in sides}
    seconds = dict.fromkeys(samples, 0.0)
    for n, part in enumerate(chunks(total, math.ceil(total / LATENCY_SLICES))):
        turn = n % len(sides)
        for name, side, items, revive in [*sides[turn:], *sides[:turn]]:
            lat = await paced(
                side.tally,
                side.sender(items[part.start : part.stop]),
                rate,
                len(part),
                what=f"{name} latency",
                revive=revive,
            )
            samples[name] += side.tally.latencies
            seconds[name] += len(part) / lat.offered_msgs_per_s
    return {name: summarise(samples[name], total / seconds[name]) for name in samples}


def summarise(samples: list[float], offered: float) -> Latency:
    ordered = sorted(samples)
    if not ordered:
        return Latency(0, offered, math.nan, math.nan, math.nan)

    def pct(p: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    return Latency(len(ordered), offered, pct(50), pct(99), ordered[-1] * 1000)


def terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


async def cancelled_by_sigterm(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run with SIGTERM cancelling the run, so every ``finally`` cleans up in order."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, terminate)


async def to_the_end(close: Callable[[], Awaitable[None]]) -> None:
    """Run a clean-up to its end even if the caller is cancelled meanwhile (Ctrl-C,
    SIGTERM), so no broker object is left half deleted; the cancel is raised after."""
    task = asyncio.ensure_future(close())
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _figures(tp: Throughput) -> dict[str, float]:
    return {
        "e2e_msgs_per_s": tp.rate,
        "publish_msgs_per_s": tp.publish_rate,
        "seconds": tp.seconds,
        "client_cpu_us_per_msg": tp.cpu_us_per_msg,
    }


async def run_pair(
    raw: Side, vplane: VplaneSide, opts: Settings, *, control: Side | None = None
) -> dict[str, Any]:
    """Raw, then vplane: warm-up and throughput each; then both latency runs, interleaved,
    at half vplane's peak. A ``control`` (a raw client that makes the broker do some of
    the work vplane's bus asks of it) is warmed up and joins the latency runs."""
    # Everything is built before any consumer runs, so no consumer idles on a busy loop.
    raw_warm, raw_items, raw_lat_items = (
        raw.prepare(n) for n in (opts.warmup, opts.events, opts.latency_max)
    )
    ctl_warm, ctl_lat_items = (
        control.prepare(n) if control else [] for n in (opts.warmup, opts.latency_max)
    )
    vp_warm, vp_envs, vp_lat_envs = (
        vplane.prepare(n) for n in (opts.warmup, opts.events, opts.latency_max)
    )
    revive = vplane.revive
    # Both sides' fixtures live through every run, and vplane's (about 30,000 envelopes,
    # some ten objects each, against raw's untracked tuples of strings) would otherwise
    # make each full collection walk them: 100 to 500 ms with the loop stopped, landing
    # in whichever run allocates when it is due (mostly vplane's, which allocates more).
    # The collector is left to what the clients and the bus themselves keep alive.
    gc.collect()
    gc.freeze()
    try:
        await raw.start()
        # The warm-up runs open connections, queues, consumers and pydantic's caches.
        await measure_throughput(
            raw.tally, lambda: raw.publish(raw_warm), opts.warmup, what="raw warm-up"
        )
        raw_tp = await measure_throughput(
            raw.tally, lambda: raw.publish(raw_items), opts.events, what="raw throughput"
        )

        await vplane.start()
        await measure_throughput(
            vplane.tally,
            lambda: vplane.publish(vp_warm),
            opts.warmup,
            what="vplane warm-up",
            revive=revive,
        )
        vp_tp = await measure_throughput(
            vplane.tally,
            lambda: vplane.publish(vp_envs),
            opts.events,
            what="vplane throughput",
            revive=revive,
        )
        if control is not None:
            await control.start()
            await measure_throughput(
                control.tally,
                lambda: control.publish(ctl_warm),
                opts.warmup,
                what="control warm-up",
            )
        rate = vp_tp.rate / 2
        total = max(1, min(opts.latency_max, int(rate * opts.latency_seconds)))
        sides: list[tuple[str, Side, Sequence[Any], Revive | None]] = [
            ("raw", raw, raw_lat_items[:total], None),
            ("vplane", vplane, vp_lat_envs[:total], revive),
        ]
        if control is not None:
            sides.append(("control", control, ctl_lat_items[:total], None))
        latencies = await interleaved(sides, rate)
    finally:
        try:
            await to_the_end(vplane.close)
        finally:
            gc.unfreeze()
            try:
                await to_the_end(raw.close)
            finally:
                if control is not None:
                    await to_the_end(control.close)
    raw_lat, vp_lat = latencies["raw"], latencies["vplane"]
    ctl_lat = latencies.get("control")

    return {
        "events": opts.events,
        "payload_bytes": len(vm_envelope("v0", 0).encode()),
        "chunk": opts.chunk,
        "consumer_batch": opts.batch,
        "raw": _figures(raw_tp),
        "vplane": _figures(vp_tp) | {"consumer_restarts": vplane.restarts},
        "ratio": vp_tp.rate / raw_tp.rate,
        "target_ratio": TARGET_RATIO,
        "latency": {
            "rate_msgs_per_s": rate,
            "count": total,
            "raw": asdict(raw_lat),
            "vplane": asdict(vp_lat),
            "ratio_p50": vp_lat.p50_ms / raw_lat.p50_ms,
            "ratio_p99": vp_lat.p99_ms / raw_lat.p99_ms,
            "target_ratio_p99": TARGET_LATENCY_RATIO,
        }
        | (
            {}
            if ctl_lat is None
            else {
                "control": asdict(ctl_lat),
                "control_ratio_p99": ctl_lat.p99_ms / raw_lat.p99_ms,
                "ratio_p99_to_control": vp_lat.p99_ms / ctl_lat.p99_ms,
            }
        ),
    }


def run_until_sigterm(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run a benchmark's coroutine; SIGTERM ends the process with 128 + SIGTERM."""
    try:
        return asyncio.run(cancelled_by_sigterm(run))
    except asyncio.CancelledError:
        raise SystemExit(128 + signal.SIGTERM) from None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the clean-up inside is done, then take effect."""
    held = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)


def on_embedded_nats(
    prefix: str, run: Callable[[str], Coroutine[Any, Any, dict[str, Any]]]
) -> dict[str, Any]:
    """``run(url)`` against an embedded nats-server with a store of its own, in a
    temporary directory named from ``prefix``. A plain kill unwinds like Ctrl-C does, so
    the broker and its store go away whichever way the run ends."""
    signal.signal(signal.SIGTERM, terminate)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        broker = EmbeddedNats(Path(tmp) / "nats")
        try:
            broker.start()
            return run_until_sigterm(run(broker.url))
        finally:
            with signals_held():
                broker.stop()


T = TypeVar("T")


async def until_changed(
    changed: asyncio.Event, check: Callable[[], T | None], what: str, timeout: float
) -> T:
    """``check()``'s first answer other than None, looked for again whenever ``changed``
    is set (something arrived); a RuntimeError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        changed.clear()
        found = check()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no {what} in {timeout:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(left, 1.0))
