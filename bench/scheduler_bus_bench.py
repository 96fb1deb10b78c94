"""Placement end to end through the bus: PlaceVm to VmPlaced, next to raw nats-py.

One embedded nats-server (temporary data dir, free loopback port, ``sync_interval:
always``) serves both sides, one after the other:

* raw nats-py: a responder task pull-consumes commands from a JetStream work-queue
  stream and answers each with one event in a file stream (with ``Nats-Msg-Id``); the
  driver publishes the commands and reads the answers from an ephemeral consumer.
* vplane: the hosts service and scheduler-high run as processes (``python -m
  services.hosts``, ``python -m services.scheduler``) with a short round (``--round``).
  The driver sends ``PlaceVm`` through ``NatsBus`` and watches the log for the
  ``PlacementRequested``, ``VmPlaced`` and ``VmCreated`` that each one causes.

Each side gets a warm-up, a windowed throughput pass (``--requests``, at most
``--window`` unanswered) and a one-at-a-time pass (``--latency-requests``, each sent
after a random pause of up to one round).

    .venv/bin/python bench/scheduler_bus_bench.py [--requests N] [--round S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nats
from _common import (
    Latency,
    run_until_sigterm,
    signals_held,
    summarise,
    terminate,
    to_the_end,
)
from nats.js import api

from schemas import Envelope
from schemas.pool import MHZ_PER_VCPU, Owner
from schemas.scheduling import PlacementRequested, PlaceVm, RoundCompleted, VmPlaced
from schemas.service import CommandRejected, ServiceStarted
from services.hosts.bootstrap import host_shape
from services.hosts.state import VCPU_PER_CORE
from shared.broker import EmbeddedNats
from shared.bus import Logged, Stream, Subscription
from shared.bus.nats import NatsBus
from shared.cli.supervisor import SERVICES, Supervisor
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace

VM_CPU = 1
VM_MEM_MIB = 256
# Publishes waiting for their ack at once, on either side.
PUBLISH_IN_FLIGHT = 64
# A pass fails when nothing it waits for arrives for this long (a stuck or dead service).
STALL_SECONDS = 30.0
START_SECONDS = 60.0
CLOSE_SECONDS = 30.0
POLL = 0.25
# The services this benchmark runs, in start order: the scheduler rebuilds its ledger
# from the hosts the hosts service has registered by then.
STARTED = tuple(s for name in ("hosts", "scheduler-high") for s in SERVICES if s[0] == name)
# vplane's events about a VM, as the stages a request goes through.
STAGES = {
    "PlacementRequested": "accepted",
    "VmPlaced": "placed",
    "CommandRejected": "rejected",
    "VmCreated": "created",
}


@dataclass
class Options:
    hosts: int
    round: float
    tick: float
    requests: int
    window: int
    latency_requests: int
    warmup: int
    seed: int
    as_json: bool


@dataclass
class Track:
    """One request: when it was sent, when each stage was seen, and its causation."""

    sent: float
    command_id: uuid.UUID | None = None
    accepted_id: uuid.UUID | None = None
    marks: dict[str, float] = field(default_factory=dict)


class Tracker:
    """Requests by name; counts the answered and finished ones and wakes waiters."""

    def __init__(self, answers: frozenset[str], finals: frozenset[str]) -> None:
        self.answers = answers
        self.finals = finals
        self.tracks: dict[str, Track] = {}
        self.answered = 0
        self.finished = 0
        self.seen = 0
        self.on_answer: Callable[[], None] | None = None
        self._changed = asyncio.Event()

    def begin(self, on_answer: Callable[[], None] | None = None) -> None:
        self.tracks = {}
        self.answered = self.finished = 0
        self.on_answer = on_answer

    def sent(self, name: str, at: float, command_id: uuid.UUID | None = None) -> None:
        self.tracks[name] = Track(at, command_id)

    def mark(self, name: str, stage: str) -> Track | None:
        """Stamp a stage the first time it is seen; the track, or None if nothing new."""
        track = self.tracks.get(name)
        if track is None or stage in track.marks:
            return None
        before = track.marks.keys()
        first_answer = stage in self.answers and not before & self.answers
        first_final = stage in self.finals and not before & self.finals
        track.marks[stage] = time.perf_counter()
        self.seen += 1
        if first_answer:
            self.answered += 1
            if self.on_answer is not None:
                self.on_answer()
        if first_final:
            self.finished += 1
        self._changed.set()
        return track

    async def wait(
        self, count: int, *, what: str, finished: bool = False, alive: Callable[[], None]
    ) -> None:
        """Until ``count`` requests are answered (or finished); fails after a stall."""
        seen, last = self.seen, time.monotonic()
        while (self.finished if finished else self.answered) < count:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), POLL)
            alive()
            if self.seen != seen:
                seen, last = self.seen, time.monotonic()
            elif time.monotonic() - last > STALL_SECONDS:
                done = self.finished if finished else self.answered
                raise RuntimeError(
                    f"{what}: nothing new for {STALL_SECONDS:.0f}s, "
                    f"{done} of {count} {'finished' if finished else 'answered'}"
                )


class Side(Protocol):
    tracker: Tracker

    async def send(self, name: str) -> None: ...

    def alive(self) -> None: ...

    def pids(self) -> dict[str, int]: ...


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | {
        "this process": time.process_time()
    }


@dataclass
class Pass:
    names: Sequence[str]
    start: float
    send_seconds: float
    seconds: float
    tracks: dict[str, Track]
    cpu: dict[str, float]


async def windowed(side: Side, names: Sequence[str], window: int, what: str) -> Pass:
    """Send every request, with at most ``window`` unanswered; wait for all to finish."""
    tracker = side.tracker
    slots = asyncio.Semaphore(window)
    publishing = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    tracker.begin(on_answer=slots.release)
    pids = side.pids()
    cpu = cpu_now(pids)
    start = time.perf_counter()

    def published(_: asyncio.Task[None]) -> None:
        publishing.release()

    async with asyncio.TaskGroup() as group:
        for name in names:
            await slots.acquire()
            await publishing.acquire()
            group.create_task(side.send(name)).add_done_callback(published)
    send_seconds = time.perf_counter() - start
    await tracker.wait(len(names), what=what, alive=side.alive)
    seconds = time.perf_counter() - start
    used = {k: v - cpu[k] for k, v in cpu_now(pids).items()}
    await tracker.wait(len(names), what=what, finished=True, alive=side.alive)
    return Pass(names, start, send_seconds, seconds, tracker.tracks, used)


async def one_at_a_time(
    side: Side, names: Sequence[str], pause: float, rng: random.Random, what: str
) -> Pass:
    """Each request after a random pause of up to ``pause``, once the last has finished."""
    tracker = side.tracker
    tracker.begin()
    pids = side.pids()
    cpu = cpu_now(pids)
    start = time.perf_counter()
    for i, name in enumerate(names):
        await asyncio.sleep(rng.uniform(0.0, pause))
        await side.send(name)
        await tracker.wait(i + 1, what=what, finished=True, alive=side.alive)
    seconds = time.perf_counter() - start
    used = {k: v - cpu[k] for k, v in cpu_now(pids).items()}
    return Pass(names, start, seconds, seconds, tracker.tracks, used)


def latency(p: Pass, stage: str, since: str | None = None) -> Latency:
    """From the send (or stage ``since``) to ``stage``, over the requests that reached it."""
    samples = [
        t.marks[stage] - (t.sent if since is None else t.marks[since])
        for t in p.tracks.values()
        if stage in t.marks and (since is None or since in t.marks)
    ]
    return summarise(samples, len(p.names) / p.send_seconds)


def rate(p: Pass, stage: str) -> float:
    """Requests that reached ``stage``, per second from the first send to the last one."""
    stamps = [t.marks[stage] for t in p.tracks.values() if stage in t.marks]
    return len(stamps) / (max(stamps) - p.start) if stamps else 0.0


def halves(p: Pass, stage: str) -> tuple[float, float]:
    """The rate of the first half of the answers (from the first send), and of the rest."""
    stamps = sorted(t.marks[stage] for t in p.tracks.values() if stage in t.marks)
    if len(stamps) < 2:
        return math.nan, math.nan
    mid = len(stamps) // 2
    first = mid / (stamps[mid - 1] - p.start)
    rest = (len(stamps) - mid) / max(stamps[-1] - stamps[mid - 1], 1e-9)
    return first, rest


def payload_sizes() -> dict[str, int]:
    """The sizes of an encoded PlaceVm and of its PlacementRequested: raw sends as many bytes."""
    command = Envelope.wrap(
        PlaceVm(vm="load-00000", priority=Owner.HIGH, cpu=VM_CPU, mem_mib=VM_MEM_MIB),
        producer="bench",
    )
    answer = Envelope.wrap(
        PlacementRequested(vm="load-00000", priority=Owner.HIGH, cpu=VM_CPU, mem_mib=VM_MEM_MIB),
        producer="scheduler-high",
        caused_by=command,
    )
    return {"command": len(command.encode()), "answer": len(answer.encode())}


class RawSide:
    """Plain nats-py: a work-queue stream of commands, a responder task, an event stream."""

    def __init__(self, url: str) -> None:
        self.url = url
        tag = uuid.uuid4().hex[:8]
        self.prefix = f"raw{tag}"
        self.cmd_stream = f"RAWCMD_{tag}"
        self.evt_stream = f"RAWEVT_{tag}"
        sizes = payload_sizes()
        self.command = b"c" * sizes["command"]
        self.answer = b"a" * sizes["answer"]
        self.tracker = Tracker(frozenset({"answer"}), frozenset({"answer"}))
        self._driver: Any = None
        self._responder: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.broker_pid = 0

    async def start(self) -> None:
        self._driver = await nats.connect(self.url, name="bench-raw-driver", connect_timeout=2)
        self._responder = await nats.connect(
            self.url, name="bench-raw-responder", connect_timeout=2
        )
        jsm = self._driver.jsm()
        await jsm.add_stream(
            api.StreamConfig(
                name=self.cmd_stream,
                subjects=[f"{self.prefix}.cmd.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.WORK_QUEUE,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        await jsm.add_stream(
            api.StreamConfig(
                name=self.evt_stream,
                subjects=[f"{self.prefix}.evt.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        await jsm.add_consumer(
            self.cmd_stream,
            api.ConsumerConfig(
                durable_name="responder",
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=-1,
                max_ack_pending=1024,
                filter_subjects=[f"{self.prefix}.cmd.>"],
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        rjs = self._responder.jetstream(timeout=10)
        commands = await rjs.pull_subscribe_bind(durable="responder", stream=self.cmd_stream)
        self._tasks.append(asyncio.create_task(self._respond(rjs, commands), name="raw-responder"))
        djs = self._driver.jetstream(timeout=10)
        answers = await djs.pull_subscribe(
            f"{self.prefix}.evt.vm.>",
            stream=self.evt_stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.NEW,
                mem_storage=True,
                inactive_threshold=60,
            ),
        )
        self._tasks.append(asyncio.create_task(self._watch(answers), name="raw-watcher"))

    async def _respond(self, js: Any, sub: Any) -> None:
        """For each command: append its answering event, then ack the command."""
        evt = f"{self.prefix}.evt.vm."
        while True:
            try:
                msgs = await sub.fetch(256, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                name = msg.subject.rsplit(".", 1)[-1]
                msg_id = f"{msg.headers[api.Header.MSG_ID]}:0"
                await js.publish(evt + name, self.answer, headers={api.Header.MSG_ID: msg_id})
                await msg.ack()

    async def _watch(self, sub: Any) -> None:
        mark = self.tracker.mark
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                mark(msg.subject.rsplit(".", 1)[-1], "answer")

    async def send(self, name: str) -> None:
        msg_id = str(uuid.uuid4())
        self.tracker.sent(name, time.perf_counter())
        await self._driver.jetstream(timeout=10).publish(
            f"{self.prefix}.cmd.scheduler.high.{name}",
            self.command,
            headers={api.Header.MSG_ID: msg_id},
        )

    def alive(self) -> None:
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"raw {task.get_name()} ended: {task.exception()!r}")

    def pids(self) -> dict[str, int]:
        return {"nats-server": self.broker_pid} if self.broker_pid else {}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for nc in (self._responder, self._driver):
            if nc is not None and not nc.is_closed:
                with contextlib.suppress(Exception):
                    await nc.close()


@dataclass(frozen=True)
class RoundFigures:
    number: int
    placed: int
    # From the round's start (its slot: number x period) to its RoundCompleted.
    seconds: float


class VplaneSide:
    """The services as processes; the driver's ``NatsBus`` sends and watches the log."""

    def __init__(self, url: str, namespace: str, sup: Supervisor, period: float) -> None:
        self.bus = NatsBus(url, namespace=namespace, client_name="bench-driver")
        self.sup = sup
        self.period = period
        self.tracker = Tracker(
            frozenset({"placed", "rejected"}), frozenset({"created", "rejected"})
        )
        self.chain_breaks = 0
        self.rejections: list[str] = []
        # Cancels of the driver's watcher that were lost and had to be repeated.
        self.recancels = 0
        self.broker_pid = 0
        self._started = {name: asyncio.Event() for name, _, _ in STARTED}
        self._watcher: Subscription | None = None

    async def start(self) -> None:
        await self.bus.start()
        # One watcher for the whole run. It sees ServiceStarted too: a short-lived
        # watcher (Client.wait_for) stopped while events flow can hang (see close).
        self._watcher = await self.bus.watch(Stream.EVENTS, ("vm.>", "service.>"), self._on_event)
        for spec in STARTED:
            await self._start_one(spec)

    async def _start_one(self, spec: tuple[str, str, dict[str, str]]) -> None:
        self.sup.start((spec,))
        started = self._started[spec[0]]
        deadline = time.monotonic() + START_SECONDS
        while not started.is_set():
            self.alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec[0]} did not start within {START_SECONDS:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), POLL)

    async def _on_event(self, entry: Logged) -> None:
        env = entry.envelope
        if env is None:
            return
        data = env.data
        if isinstance(data, ServiceStarted):
            if data.service in self._started:
                self._started[data.service].set()
            return
        stage = STAGES.get(env.type)
        if stage is None:
            return
        track = self.tracker.mark(env.subject.removeprefix("vm/"), stage)
        if track is None:
            return
        # The causation chain: PlaceVm <- PlacementRequested <- VmPlaced.
        if isinstance(data, PlacementRequested):
            track.accepted_id = env.id
            self.chain_breaks += env.causation_id != track.command_id
        elif isinstance(data, VmPlaced):
            self.chain_breaks += env.causation_id != track.accepted_id
        elif isinstance(data, CommandRejected) and len(self.rejections) < 5:
            self.rejections.append(f"{data.command_type} {data.about}: {data.reason}")

    async def rounds_since(self, seq: int) -> list[RoundFigures]:
        """The RoundCompleted events appended from ``seq`` on, read back from the log."""
        found = []
        async for entry in self.bus.replay(from_seq=seq, filters=("scheduler.>",)):
            env = entry.envelope
            if env is not None and isinstance(env.data, RoundCompleted) and env.data.placed:
                took = env.occurred_at.timestamp() - env.data.round * self.period
                found.append(RoundFigures(env.data.round, env.data.placed, took))
        return found

    async def send(self, name: str) -> None:
        now = time.perf_counter()
        command = PlaceVm(vm=name, priority=Owner.HIGH, cpu=VM_CPU, mem_mib=VM_MEM_MIB)
        env = Envelope.wrap(command, producer="bench")
        self.tracker.sent(name, now, env.id)
        await self.bus.send(env)

    def alive(self) -> None:
        for child in self.sup.crashed():
            lines = child.log_path.read_text(errors="replace").splitlines()[-15:]
            tail = "\n".join(lines)
            raise RuntimeError(f"{child.name} exited with {child.exit_code}; its log ends:\n{tail}")

    def pids(self) -> dict[str, int]:
        found = {c.name: c.proc.pid for c in self.sup.children}
        return found | ({"nats-server": self.broker_pid} if self.broker_pid else {})

    async def close(self) -> None:
        """``NatsBus.close`` stops the watcher by cancelling its task once. nats-py's
        ``next_msg`` can lose that cancel (Python 3.11's ``wait_for`` returns a message
        that arrived in the same instant), and then the close waits forever; so the
        watcher's task is cancelled again until the close is done."""
        closing = asyncio.ensure_future(self.bus.close())
        deadline = time.monotonic() + CLOSE_SECONDS
        while not closing.done():
            await asyncio.wait({closing}, timeout=1.0)
            task = getattr(self._watcher, "_task", None)
            if not closing.done() and isinstance(task, asyncio.Task) and not task.done():
                task.cancel()
                self.recancels += 1
            if time.monotonic() > deadline:
                closing.cancel()
                raise RuntimeError(f"the driver's bus did not close in {CLOSE_SECONDS:.0f}s")
        closing.result()


def raw_warmup(opts: Options) -> int:
    """Raw costs little a request: its warm-up is larger, so it is not over in an instant."""
    return max(opts.warmup, 200)


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


def rounds_of(rounds: Sequence[RoundFigures]) -> dict[str, float]:
    """The rounds that placed a pass's requests: how many, how full, how long."""
    if not rounds:
        return {"count": 0}
    placed = sorted(r.placed for r in rounds)
    took = sorted(r.seconds for r in rounds)
    return {
        "count": len(rounds),
        "placed_p50": placed[len(placed) // 2],
        "placed_max": placed[-1],
        "round_ms_p50": took[len(took) // 2] * 1000,
        "round_ms_max": took[-1] * 1000,
        "ms_per_placement": sum(took) / sum(placed) * 1000,
    }


def vplane_pass(p: Pass, rounds: Sequence[RoundFigures]) -> dict[str, Any]:
    tracks = p.tracks.values()
    first, rest = halves(p, "placed")
    return {
        "requests": len(p.names),
        "placed": sum("placed" in t.marks for t in tracks),
        "created": sum("created" in t.marks for t in tracks),
        "rejected": sum("rejected" in t.marks for t in tracks),
        "send_seconds": p.send_seconds,
        "seconds": p.seconds,
        "placements_per_s": rate(p, "placed"),
        "placements_per_s_first_half": first,
        "placements_per_s_second_half": rest,
        "created_per_s": rate(p, "created"),
        "latency": {
            "accepted": asdict(latency(p, "accepted")),
            "placed": asdict(latency(p, "placed")),
            "created": asdict(latency(p, "created")),
            "accepted_to_placed": asdict(latency(p, "placed", "accepted")),
            "placed_to_created": asdict(latency(p, "created", "placed")),
        },
        "rounds": rounds_of(rounds),
        "cpu_s": p.cpu,
    }


def raw_pass(p: Pass) -> dict[str, Any]:
    return {
        "requests": len(p.names),
        "answered": sum("answer" in t.marks for t in p.tracks.values()),
        "send_seconds": p.send_seconds,
        "seconds": p.seconds,
        "answers_per_s": rate(p, "answer"),
        "latency": {"answer": asdict(latency(p, "answer"))},
        "cpu_s": p.cpu,
    }


async def run_raw(raw: RawSide, opts: Options, rng: random.Random) -> dict[str, Any]:
    try:
        await raw.start()
        await windowed(raw, names("rw", raw_warmup(opts)), opts.window, "raw warm-up")
        load = await windowed(raw, names("rl", opts.requests), opts.window, "raw throughput")
        one = await one_at_a_time(
            raw, names("r1", opts.latency_requests), opts.round, rng, "raw one at a time"
        )
    finally:
        await to_the_end(raw.close)
    return {"throughput": raw_pass(load), "one_at_a_time": raw_pass(one)}


async def run_vplane(side: VplaneSide, opts: Options, rng: random.Random) -> dict[str, Any]:
    try:
        await side.start()
        await windowed(side, names("warm", opts.warmup), opts.window, "vplane warm-up")
        seq = await side.bus.last_seq() + 1
        load = await windowed(side, names("load", opts.requests), opts.window, "vplane throughput")
        load_rounds = await side.rounds_since(seq)
        seq = await side.bus.last_seq() + 1
        one = await one_at_a_time(
            side, names("one", opts.latency_requests), opts.round, rng, "vplane one at a time"
        )
        one_rounds = await side.rounds_since(seq)
    finally:
        await to_the_end(side.close)
    return {
        "throughput": vplane_pass(load, load_rounds),
        "one_at_a_time": vplane_pass(one, one_rounds),
        "chain_breaks": side.chain_breaks,
        "rejections": side.rejections,
        "watcher_recancels": side.recancels,
    }


def ratios(vp: dict[str, Any], raw: dict[str, Any]) -> dict[str, float]:
    out = {"throughput": vp["throughput"]["placements_per_s"] / raw["throughput"]["answers_per_s"]}
    for key, run in (("load", "throughput"), ("one", "one_at_a_time")):
        answer = raw[run]["latency"]["answer"]
        for stage in ("placed", "accepted"):
            mine = vp[run]["latency"][stage]
            for pct in ("p50", "p99"):
                out[f"{key}_{stage}_{pct}"] = mine[f"{pct}_ms"] / answer[f"{pct}_ms"]
    return out


async def measure(
    url: str, broker_pid: int, namespace: str, sup: Supervisor, opts: Options
) -> dict[str, Any]:
    # Raw first, before the services start, so they take no CPU from it.
    raw = RawSide(url)
    raw.broker_pid = broker_pid
    raw_result = await run_raw(raw, opts, random.Random(opts.seed))
    side = VplaneSide(url, namespace, sup, opts.round)
    side.broker_pid = broker_pid
    vp_result = await run_vplane(side, opts, random.Random(opts.seed))
    return {
        "url": url,
        "hosts": opts.hosts,
        "round_s": opts.round,
        "tick_s": opts.tick,
        "vm": {"cpu": VM_CPU, "mem_mib": VM_MEM_MIB},
        "requests": opts.requests,
        "window": opts.window,
        "latency_requests": opts.latency_requests,
        "warmup": opts.warmup,
        "raw_warmup": raw_warmup(opts),
        "raw_payload_bytes": payload_sizes(),
        "vplane": vp_result,
        "raw": raw_result,
        "ratio": ratios(vp_result, raw_result),
    }


def run_embedded(opts: Options) -> dict[str, Any]:
    """The server and the services live in a temporary directory; both always stop."""
    with tempfile.TemporaryDirectory(prefix="vplane-bench-") as tmp:
        broker = EmbeddedNats(Path(tmp) / "nats")
        namespace = unique_namespace("bsched")
        env = {
            "VPLANE_BUS_URL": broker.url,
            "VPLANE_NAMESPACE": namespace,
            "VPLANE_HOSTS": str(opts.hosts),
            "VPLANE_HOST_PREFIX": "h",
            "VPLANE_ROUND_SECONDS": repr(opts.round),
            "VPLANE_TICK_SECONDS": repr(opts.tick),
            "VPLANE_LOG_FORMAT": "json",
        }
        # The services inherit this environment: other VPLANE_* settings apply to them.
        inherited = {k: v for k, v in os.environ.items() if k.startswith("VPLANE_")}
        inherited = {k: v for k, v in inherited.items() if k not in env}
        sup = Supervisor(env, Path(tmp) / "logs")
        try:
            broker.start()
            proc = getattr(broker, "_proc", None)
            pid = int(proc.pid) if proc is not None else 0
            return run_until_sigterm(measure(broker.url, pid, namespace, sup, opts)) | {
                "inherited_env": inherited
            }
        finally:
            with signals_held():
                sup.stop()
                broker.stop()


def row(label: str, cell: dict[str, float]) -> str:
    return (
        f"  {label:<36}{cell['p50_ms']:9.2f}{cell['p99_ms']:9.2f}{cell['max_ms']:9.2f}"
        f"{cell['count']:7d}"
    )


def latency_table(
    vp: dict[str, Any], raw: dict[str, Any], ratio: dict[str, float], key: str
) -> None:
    print(f"  {'from the send to':<36}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'count':>7}")
    lat = vp["latency"]
    print(row("vplane  PlacementRequested (accepted)", lat["accepted"]))
    print(row("vplane  VmPlaced (placed)", lat["placed"]))
    print(row("vplane  VmCreated (on its host)", lat["created"]))
    print(row("raw     answering event", raw["latency"]["answer"]))
    for stage, label in (("placed", "VmPlaced"), ("accepted", "PlacementRequested")):
        print(
            f"  {'ratio   ' + label + ' / raw':<36}{ratio[f'{key}_{stage}_p50']:9.1f}"
            f"{ratio[f'{key}_{stage}_p99']:9.1f}"
        )


def report(r: dict[str, Any]) -> None:
    vp, raw, ratio = r["vplane"], r["raw"], r["ratio"]
    vt, rt = vp["throughput"], raw["throughput"]
    shape = host_shape("h1")
    print(
        f"== placement through the bus, PlaceVm -> VmPlaced: {r['vm']['cpu']} vCPU, "
        f"{r['vm']['mem_mib']} MiB each"
    )
    print(
        f"nats-server at {r['url']} (sync_interval: always); hosts service ({r['hosts']} hosts "
        f"of {shape.cpu_cores} cores, {shape.mem_mib // 1024} GiB) and scheduler-high as processes"
    )
    print(
        f"a scheduling round every {r['round_s'] * 1000:g} ms (a request waits for the next "
        f"one), telemetry every {r['tick_s']:g} s; warm-up {r['warmup']} requests "
        f"(raw {r['raw_warmup']})"
    )
    if r["inherited_env"]:
        given = " ".join(f"{k}={v}" for k, v in sorted(r["inherited_env"].items()))
        print(f"settings from the environment, for the services too: {given}")
    print()
    print(
        f"throughput: {r['requests']} requests, at most {r['window']} unanswered, "
        "first send to last answer"
    )
    print(
        f"  vplane  PlaceVm -> VmPlaced      : {vt['placements_per_s']:8.1f} placements/s  "
        f"(first half {vt['placements_per_s_first_half']:.1f}/s, second half "
        f"{vt['placements_per_s_second_half']:.1f}/s; -> VmCreated {vt['created_per_s']:.1f}/s)"
    )
    print(f"  raw     command -> answer event  : {rt['answers_per_s']:8.1f} answers/s")
    print(f"  ratio   vplane / raw             : {ratio['throughput']:8.3f}")
    rounds = vt["rounds"]
    if rounds["count"]:
        print(
            f"  vplane's rounds: {rounds['count']} placed these, {rounds['placed_p50']} per round "
            f"(p50; max {rounds['placed_max']}), {rounds['round_ms_p50']:.0f} ms a round (p50; "
            f"max {rounds['round_ms_max']:.0f}), {rounds['ms_per_placement']:.1f} ms per placement"
        )
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in vt["cpu_s"].items())
    raw_cpu = ", ".join(f"{k} {v:.1f}" for k, v in rt["cpu_s"].items())
    print(f"  CPU seconds in the pass: vplane: {cpu}; raw: {raw_cpu}")
    print()
    print("latency under that load:")
    latency_table(vt, rt, ratio, "load")
    print()
    one, raw_one = vp["one_at_a_time"], raw["one_at_a_time"]
    print(
        f"latency one at a time: {r['latency_requests']} requests, each after a random pause "
        "of up to one round"
    )
    latency_table(one, raw_one, ratio, "one")
    steps, alone = one["latency"], one["rounds"]
    lasts = (
        f"; a round that places one VM lasts {alone['round_ms_p50']:.1f} ms"
        if alone["count"]
        else ""
    )
    print(
        f"  where vplane's time goes (p50): send -> accepted {steps['accepted']['p50_ms']:.1f} ms, "
        f"accepted -> placed {steps['accepted_to_placed']['p50_ms']:.1f} ms (waiting for "
        f"the round: 0 to {r['round_s'] * 1000:g} ms), placed -> created "
        f"{steps['placed_to_created']['p50_ms']:.1f} ms{lasts}"
    )
    print()
    rejected = vt["rejected"] + one["rejected"]
    if rejected or vp["chain_breaks"]:
        print(
            f"WARNING: {rejected} rejected, {vp['chain_breaks']} causation links broken; "
            f"{'; '.join(vp['rejections'])}"
        )
    else:
        print(
            "every request placed and created; causation PlaceVm <- PlacementRequested <- "
            "VmPlaced checked on each"
        )
    if vp["watcher_recancels"]:
        print(
            f"NOTE: the driver's watcher lost its cancel and was cancelled "
            f"{vp['watcher_recancels']} more times before the bus closed"
        )


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=64, help="hosts of the hosts service")
    parser.add_argument("--round", type=float, default=0.05, help="scheduling round, seconds")
    parser.add_argument("--tick", type=float, default=1.0, help="telemetry tick, seconds")
    parser.add_argument("--requests", type=int, default=1_000, help="throughput pass size")
    parser.add_argument("--window", type=int, default=200, help="most unanswered requests")
    parser.add_argument("--latency-requests", type=int, default=100, help="one-at-a-time pass size")
    parser.add_argument("--warmup", type=int, default=20, help="vplane warm-up requests")
    parser.add_argument("--seed", type=int, default=7, help="seeds the pauses")
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    if min(ns.hosts, ns.requests, ns.window, ns.latency_requests, ns.warmup) < 1:
        parser.error("--hosts, --requests, --window, --latency-requests, --warmup: at least 1")
    if ns.round <= 0 or ns.tick <= 0:
        parser.error("--round and --tick must be positive")
    shape = host_shape("h1")
    per_host = min(
        int(shape.cpu_cores * shape.cpu_mhz // (VM_CPU * MHZ_PER_VCPU)),
        shape.mem_mib // VM_MEM_MIB,
        shape.cpu_cores * VCPU_PER_CORE // VM_CPU,
    )
    wanted = ns.requests + ns.latency_requests + ns.warmup
    # One host's worth is kept free: the HA spare (VPLANE_HA_FAILURES, 1 by default).
    if wanted > (ns.hosts - 1) * per_host:
        parser.error(
            f"{wanted} VMs do not fit on {ns.hosts} hosts ({per_host} each, one kept spare): "
            f"use --hosts {math.ceil(wanted / per_host) + 1} or more"
        )
    return Options(
        hosts=ns.hosts,
        round=ns.round,
        tick=ns.tick,
        requests=ns.requests,
        window=ns.window,
        latency_requests=ns.latency_requests,
        warmup=ns.warmup,
        seed=ns.seed,
        as_json=ns.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the services and the server always stop.
    signal.signal(signal.SIGTERM, terminate)
    result = run_embedded(opts)
    report(result)
    if opts.as_json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
