"""Fault tolerance (record/replay) through NATS JetStream: how fast the FT log ships next
to raw nats-py publishing the same bytes, how long a failover keeps the outside world
waiting (and whether it loses or repeats an output), and how long outputs are held.

One embedded nats-server (temporary store, free loopback port, ``sync_interval:
always``). Each case runs a fresh stack in its own namespace in this process
(``tests/unit/stack.py``'s ``service_stack``): the hosts, both schedulers and the FT
service (``services/ft``); the migration coordinator is not started, HA detection is off
(``ha_failures=0``: the crash is declared with ``CrashHost``). The figures are the log's,
read by a watcher in this process that stamps each event with the wall time it arrived.
A hosts tick is ``--tick`` wall seconds and ``--tick`` x ``--speed`` emulated ones; the
FT service paces its epochs on that emulated clock.

The protected VM is a "recorded guest": full memory, 16 MiB, ``GuestInputs`` (packets
from outside, each answered with one packet out), placed on ``h1``. ``ProtectVm`` (mode
``record-replay``) places its backup, copies its state (``BackupLoaded``), then drives
the primary an epoch at a time (``RunVm(record=True)``): each run's ``VmRan`` carries the
inputs that reached the guest during it, the FT log entries, and the backup replays each
run (``RunVm(logged=...)``); a sync point (``PairSynced``) releases the run's outputs.

* **log** (shipping rate): a guest at ``--log-pps`` packets/s of 64 bytes
  (``max_packet=64``), epoch ``--log-epoch-ms``. Once the backup is loaded, the primary's
  runs are counted for ``--log-seconds``: an FT log entry is one ``LoggedInput`` (a
  packet, a timer read or a device completion) of the protected primary's ``VmRan``
  events (``len(VmRan.inputs)`` of its ``ft-run`` runs), each event appended to the log
  and acknowledged by the broker in the FT cycle. The rate is the entries of the runs that
  arrived after the first one in the window over the wall seconds between the first and
  the last arrival. A run holds at most 512 inputs and 64 KiB of them (``MAX_RUN_INPUTS``,
  ``MAX_RUN_INPUT_BYTES``): the NIC drops the rest (``VmRan.dropped``, shown). Raw: once
  the stack has stopped, the same ``VmRan`` payloads (the bytes the watcher read back
  from the log) are published with nats-py to a stream configured as vplane's event log
  (file storage, a ``Nats-Msg-Id`` each, one subject per aggregate), each publish's
  JetStream ack awaited before the next, as the FT cycle has one run of a pair in flight
  at a time (``raw nats-py``, the ratio's); then with ``RAW_WINDOW`` publishes in flight
  (``pipelined``, for reference). Each raw run is at most ``--raw-seconds``.
* **failover**: three hosts; a guest at ``--pps`` packets/s, epoch ``--epoch-ms``, backup
  on ``h2``. After ``--syncs`` sync points, ``CrashHost(h1)``. The failover time is from
  ``HostCrashed``'s emulated time (its envelope's ``sim_time``) to the first release
  (``PairSynced`` or ``OutputsReleased`` of the VM) of a packet whose seq is above the
  last seq released before the crash, in emulated ms, and in wall seconds between the two
  events' ``occurred_at``. The backup first replays what is left of the log, and those
  releases may come before the VM has failed over: so the first release after
  ``VmFailedOver`` (of the VM running on the backup's host) is shown too. Outputs are
  gapless when every released seq, in log order, from the first release to the end
  (protection restored on ``h3`` and ``--syncs`` sync points more), follows the one
  before by one: none lost, none twice.
* **latency**: two hosts; a guest at ``--pps`` packets/s, epoch ``--epoch-ms``. For
  ``--latency-seconds`` once the backup is loaded, every ``PairSynced``'s ``held_ms``
  (emulated ms from the run logged to its sync point, the outputs held meanwhile):
  p50 and p99, and the wall ms they stand for (``held_ms`` / ``--speed``).

The checkpoint and lockstep modes are asked for too (``ProtectVm`` on the latency case's
VM): while the service refuses them as not available, they are reported as not measured.

    .venv/bin/python bench/ft_bench.py [--cases log,failover,latency] [--speed 50]
        [--log-pps 10000] [--log-epoch-ms 40] [--log-seconds 15] [--raw-seconds 5]
        [--pps 200] [--epoch-ms 25] [--syncs 10] [--latency-seconds 10] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from _common import TARGET_RATIO, run_until_sigterm, signals_held, terminate
from ha_bench import stop_watch
from migration_bench import drop_namespace
from nats.js import api

from schemas import Envelope, Message
from schemas.ft import (
    BackupLoaded,
    FtMode,
    OutputsReleased,
    PairSynced,
    ProtectionEnded,
    ProtectionRequested,
    ProtectVm,
    VmFailedOver,
)
from schemas.host import CrashHost, GuestMemoryDiverged, HostCrashed
from schemas.memory import MAX_RUN_INPUTS, SentPacket, VmRan
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.service import CommandRejected
from schemas.vm import GuestInputs, MemoryMode, VmCreated
from shared.broker import EmbeddedNats
from shared.bus import Logged, Stream
from shared.bus.nats import NatsBus
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace
from tests.unit.stack import service_stack

T = TypeVar("T")
VM = "web"
SERVICES = ("hosts", "scheduler-high", "scheduler-low", "ft")
CASES = ("log", "failover", "latency")
# The goal for the shipping rate, entries per wall second (the ratio's target is
# _common's TARGET_RATIO).
GOAL_ENTRIES_PER_S = 20_000
WAIT = 60.0
# Raw's publishes in flight when pipelined.
RAW_WINDOW = 64
RAW_STREAM = "BENCHFT"
RAW_PREFIX = "benchft.evt"


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Seen:
    """An event of the log as the watcher read it: its envelope, its bytes, when it
    arrived (perf_counter) and where it is in the log."""

    env: Envelope[Message]
    raw: bytes
    at: float
    seq: int


class Recorder:
    """Every event of a case's namespace, in log order."""

    def __init__(self) -> None:
        self.events: list[Seen] = []
        self._changed = asyncio.Event()

    async def on_event(self, entry: Logged) -> None:
        if entry.envelope is not None:
            self.events.append(Seen(entry.envelope, entry.raw, time.perf_counter(), entry.seq))
            self._changed.set()

    def of(self, kind: type[T], after: float = 0.0) -> list[tuple[T, Seen]]:
        """The events of ``kind`` that arrived after ``after`` (perf_counter), in order."""
        return [(s.env.data, s) for s in self.events if isinstance(s.env.data, kind) and s.at > after]  # type: ignore[misc]

    async def until(self, check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """``check()``'s first answer other than None, looked for whenever something arrives."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            found = check()
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {what} in {timeout:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    def diverged(self) -> list[str]:
        return [
            f"{e.event_type} #{e.event_seq}: {e.error}" for e, _ in self.of(GuestMemoryDiverged)
        ]


@dataclass
class Case:
    stack: Any
    rec: Recorder

    async def place(self, inputs: GuestInputs) -> None:
        await self.stack.client.send(
            PlaceVm(
                vm=VM,
                priority=Owner.LOW,
                cpu=1,
                mem_mib=16,
                memory_mode=MemoryMode.FULL,
                seed=7,
                inputs=inputs,
                rules=PlacementRules(host_affinity=Affinity(must=["h1"])),
            )
        )
        await self.rec.until(
            lambda: True if any(e.vm == VM for e, _ in self.rec.of(VmCreated)) else None,
            f"{VM} created",
        )

    async def protect(self, cmd: ProtectVm) -> Message:
        """ProtectVm's answer: ProtectionRequested or CommandRejected."""
        [reply] = await self.stack.client.send_and_wait(cmd, timeout=WAIT)
        data: Message = reply.data
        return data

    async def loaded(self, count: int = 1) -> Seen:
        """The ``count``-th BackupLoaded."""
        found = await self.rec.until(
            lambda: s[count - 1][1] if len(s := self.rec.of(BackupLoaded)) >= count else None,
            f"backup {count} loaded",
        )
        return found

    def ended(self) -> list[str]:
        return [e.reason for e, _ in self.rec.of(ProtectionEnded)]


@contextlib.asynccontextmanager
async def case_stack(url: str, opts: argparse.Namespace, hosts: int) -> AsyncIterator[Case]:
    """A fresh stack in its own namespace, followed from its first event; gone after."""
    namespace = unique_namespace("ft")
    rec = Recorder()
    settings: dict[str, object] = {
        "speed": opts.speed,
        "tick_seconds": opts.tick,
        "ha_failures": 0,
        "rebalance_threshold": 1.0,
        "check_folds": False,
    }
    try:
        async with service_stack(
            hosts,
            connect=lambda ns: NatsBus(url, ns, client_name="bench-ft"),
            namespace=namespace,
            ft=True,
            settings=settings,
            only=SERVICES,
        ) as stack:
            sub = await stack.bus.watch(Stream.EVENTS, (), rec.on_event, from_seq=1)
            try:
                yield Case(stack, rec)
            finally:
                await stop_watch(sub)
    finally:
        await drop_namespace(url, namespace)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def primary_run(event: VmRan) -> bool:
    """One of the protected primary's FT runs (not a replay, not a host's tick)."""
    return event.vm == VM and event.tag.startswith("ft-run")


# Log shipping


async def run_log(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    inputs = GuestInputs(packets_per_s=opts.log_pps, max_packet=64)
    async with case_stack(url, opts, hosts=2) as case:
        await case.place(inputs)
        requested = await case.protect(ProtectVm(vm=VM, epoch_ms=opts.log_epoch_ms))
        if not isinstance(requested, ProtectionRequested):
            raise RuntimeError(f"ProtectVm refused: {requested}")
        loaded = await case.loaded()
        progress(f"log: backup loaded; counting the primary's runs for {opts.log_seconds:g} s")
        start = time.perf_counter()
        await asyncio.sleep(opts.log_seconds)
        end = time.perf_counter()
        runs = [
            (e, s)
            for e, s in case.rec.of(VmRan, loaded.at)
            if primary_run(e) and start <= s.at <= end
        ]
        syncs = [(e, s) for e, s in case.rec.of(PairSynced, start) if s.at <= end]
        diverged = case.rec.diverged()
        ended = case.ended()
    if len(runs) < 2:
        raise RuntimeError(f"log: {len(runs)} runs of the primary in {opts.log_seconds:g} s")
    first, last = runs[0][1].at, runs[-1][1].at
    counted = runs[1:]
    entries = sum(len(e.inputs) for e, _ in counted)
    vplane_rate = entries / (last - first)
    payloads = [(s.raw, len(e.inputs), e.aggregate()) for e, s in runs]
    progress(f"log: raw nats-py, {len(payloads)} VmRan payloads")
    raw = await raw_publish(url, payloads, window=1, seconds=opts.raw_seconds)
    piped = await raw_publish(url, payloads, window=RAW_WINDOW, seconds=opts.raw_seconds)
    all_entries = [len(e.inputs) for e, _ in runs]
    return {
        "pps": opts.log_pps,
        "epoch_ms": opts.log_epoch_ms,
        "runs": len(counted),
        "entries": entries,
        "seconds": last - first,
        "vplane_entries_per_s": vplane_rate,
        "runs_per_s": len(counted) / (last - first),
        "entries_per_run": statistics.mean(all_entries),
        "max_entries_per_run": max(all_entries),
        "dropped": sum(e.dropped for e, _ in runs),
        "payload_bytes": statistics.mean(len(s.raw) for _, s in runs),
        "synced_entries_per_s": sum(e.inputs for e, _ in syncs) / (end - start),
        "syncs": len(syncs),
        "unequal_syncs": sum(not e.equal for e, _ in syncs),
        "backup_behind": len(runs) - len([1 for e, _ in syncs]),
        "raw": raw,
        "pipelined": piped,
        "log_ratio": vplane_rate / raw["entries_per_s"],
        "pipelined_ratio": vplane_rate / piped["entries_per_s"],
        "diverged": diverged,
        "ended": ended,
    }


async def raw_publish(
    url: str, payloads: Sequence[tuple[bytes, int, str]], *, window: int, seconds: float
) -> dict[str, Any]:
    """Publish ``payloads`` (bytes, entries, aggregate) in turn, over and over, with
    ``window`` JetStream acks awaited together, for at most ``seconds`` (and at most
    twice through them): entries per second."""
    nc = await nats.connect(url, name="bench-ft-raw", connect_timeout=2)
    stream = f"{RAW_STREAM}{uuid.uuid4().hex[:8].upper()}"
    prefix = f"{RAW_PREFIX}{stream[-8:].lower()}"
    try:
        js = nc.jetstream(timeout=30)
        await nc.jsm().add_stream(
            api.StreamConfig(
                name=stream,
                subjects=[f"{prefix}.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        items = list(payloads) * 2
        sent = entries = 0
        start = time.perf_counter()
        deadline = start + seconds
        while sent < len(items) and time.perf_counter() < deadline:
            part = items[sent : sent + window]
            futures = [
                await js.publish_async(
                    f"{prefix}.{aggregate.replace('/', '.')}",
                    data,
                    headers={api.Header.MSG_ID: str(uuid.uuid4())},
                )
                for data, _, aggregate in part
            ]
            await asyncio.gather(*futures)
            sent += len(part)
            entries += sum(n for _, n, _ in part)
        took = time.perf_counter() - start
        await nc.jsm().delete_stream(stream)
    finally:
        await nc.close()
    return {
        "window": window,
        "published": sent,
        "entries": entries,
        "seconds": took,
        "entries_per_s": entries / took,
        "publishes_per_s": sent / took,
    }


# Failover


def releases(case: Case) -> list[tuple[list[SentPacket], Seen]]:
    """Every release of the VM's outputs, in log order."""
    out = []
    for s in case.rec.events:
        e = s.env.data
        if isinstance(e, PairSynced | OutputsReleased) and e.vm == VM:
            out.append((e.released, s))
    return out


def gapless(seqs: Sequence[int]) -> bool:
    return len(seqs) > 0 and list(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))


async def run_failover(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    inputs = GuestInputs(packets_per_s=opts.pps)
    async with case_stack(url, opts, hosts=3) as case:
        await case.place(inputs)
        cmd = ProtectVm(vm=VM, backup_host="h2", epoch_ms=opts.epoch_ms)
        requested = await case.protect(cmd)
        if not isinstance(requested, ProtectionRequested):
            raise RuntimeError(f"ProtectVm refused: {requested}")
        loaded = await case.loaded()
        await case.rec.until(
            lambda: True if len(case.rec.of(PairSynced, loaded.at)) >= opts.syncs else None,
            f"{opts.syncs} sync points",
        )
        progress(f"failover: {opts.syncs} sync points; CrashHost(h1)")
        began = time.perf_counter()
        await case.stack.client.send(CrashHost(host="h1"))
        [(_, crashed)] = await case.rec.until(
            lambda: case.rec.of(HostCrashed) or None, "HostCrashed"
        )
        [(over, over_seen)] = await case.rec.until(
            lambda: case.rec.of(VmFailedOver) or None, "VmFailedOver"
        )
        reloaded = await case.loaded(2)
        await case.rec.until(
            lambda: True if len(case.rec.of(PairSynced, reloaded.at)) >= opts.syncs else None,
            f"{opts.syncs} sync points after the failover",
        )
        wall = time.perf_counter() - began
        out = releases(case)
        diverged = case.rec.diverged()
        ended = case.ended()
        syncs = [e for e, _ in case.rec.of(PairSynced)]
    before = [o.seq for r, s in out if s.seq < crashed.seq for o in r]
    last_before = max(before, default=0)
    after_crash = next(
        (s for r, s in out if s.seq > crashed.seq and any(o.seq > last_before for o in r)), None
    )
    after_over = next((s for r, s in out if s.seq > over_seen.seq and r), None)
    if after_crash is None or after_over is None:
        raise RuntimeError("failover: no output released after the crash")
    seqs = [o.seq for r, _ in out for o in r]

    def since(seen: Seen) -> dict[str, float]:
        return {
            "emulated_ms": (seen.env.sim_time - crashed.env.sim_time) * 1000,
            "wall_s": (seen.env.occurred_at - crashed.env.occurred_at).total_seconds(),
        }

    return {
        "pps": opts.pps,
        "epoch_ms": opts.epoch_ms,
        "first_release": since(after_crash),
        "first_release_type": after_crash.env.type,
        "failed_over": since(over_seen),
        "first_release_after_failover": since(after_over),
        "first_release_after_failover_type": after_over.env.type,
        "taken_over_on": over.host,
        "new_backup_host": reloaded.env.data.backup_host  # type: ignore[attr-defined]
        if isinstance(reloaded.env.data, BackupLoaded)
        else None,
        "last_seq_before": last_before,
        "released": len(seqs),
        "first_seq": seqs[0] if seqs else None,
        "last_seq": seqs[-1] if seqs else None,
        "duplicates": len(seqs) - len(set(seqs)),
        "gapless": gapless(seqs) and len(seqs) == len(set(seqs)),
        "unequal_syncs": sum(not e.equal for e in syncs),
        "case_wall_s": wall,
        "diverged": diverged,
        "ended": ended,
    }


# Output latency, and the modes not available yet


async def run_latency(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    inputs = GuestInputs(packets_per_s=opts.pps)
    async with case_stack(url, opts, hosts=2) as case:
        await case.place(inputs)
        modes = {}
        for mode in (FtMode.CHECKPOINT, FtMode.LOCKSTEP):
            answer = await case.protect(ProtectVm(vm=VM, mode=mode, epoch_ms=opts.epoch_ms))
            if isinstance(answer, CommandRejected):
                modes[mode.value] = f"refused: {answer.reason}"
            else:
                # Not expected while only record/replay exists: say so, and stop there.
                modes[mode.value] = f"accepted ({answer.type_name()}): not measured here"
                raise RuntimeError(f"{mode.value} was accepted: this bench does not measure it")
        requested = await case.protect(ProtectVm(vm=VM, epoch_ms=opts.epoch_ms))
        if not isinstance(requested, ProtectionRequested):
            raise RuntimeError(f"ProtectVm refused: {requested}")
        loaded = await case.loaded()
        progress(f"latency: backup loaded; sync points for {opts.latency_seconds:g} s")
        await asyncio.sleep(opts.latency_seconds)
        syncs = [e for e, _ in case.rec.of(PairSynced, loaded.at)]
        runs = [e for e, _ in case.rec.of(VmRan, loaded.at) if primary_run(e)]
        diverged = case.rec.diverged()
        ended = case.ended()
    held = [e.held_ms for e in syncs]
    if not held:
        raise RuntimeError("latency: no sync point")
    return {
        "pps": opts.pps,
        "epoch_ms": opts.epoch_ms,
        "syncs": len(syncs),
        "runs": len(runs),
        "outputs": sum(len(e.released) for e in syncs),
        "held_p50_ms": percentile(held, 0.50),
        "held_p99_ms": percentile(held, 0.99),
        "held_max_ms": max(held),
        "unequal_syncs": sum(not e.equal for e in syncs),
        "modes": modes,
        "diverged": diverged,
        "ended": ended,
    }


async def run(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    runners = {"log": run_log, "failover": run_failover, "latency": run_latency}
    out: dict[str, Any] = {}
    for name in opts.cases:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        out[name] = await asyncio.wait_for(runners[name](url, opts), opts.case_limit)
        out[name]["wall_s"] = time.perf_counter() - began
        print(f"  {name}: {out[name]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    return out


# The report


def report(result: dict[str, Any], opts: argparse.Namespace) -> None:
    print(
        "== FT (record-replay) through NATS JetStream (sync_interval: always): hosts, both "
        "schedulers and the FT service in-process"
    )
    print(
        f"a tick: {opts.tick:g} s wall, {opts.tick * opts.speed:g} s emulated "
        f"(speed {opts.speed:g}); the guest: 16 MiB, full memory, GuestInputs"
    )
    if "log" in result:
        r = result["log"]
        print()
        print(
            f"log shipping: vplane {r['vplane_entries_per_s']:.0f} entries/s, raw nats-py "
            f"{r['raw']['entries_per_s']:.0f} entries/s, log ratio {r['log_ratio']:.2f}"
        )
        print(
            f"  target: ratio >= {TARGET_RATIO:g} "
            f"({'met' if r['log_ratio'] >= TARGET_RATIO else 'missed'}), "
            f"goal >= {GOAL_ENTRIES_PER_S:,} entries/s "
            f"({'met' if r['vplane_entries_per_s'] >= GOAL_ENTRIES_PER_S else 'missed'})"
        )
        print(
            f"  vplane: {r['runs']} runs of the primary in {r['seconds']:.1f} s "
            f"({r['runs_per_s']:.1f} runs/s), {r['entries_per_run']:.0f} entries a run "
            f"(max {r['max_entries_per_run']}, cap {MAX_RUN_INPUTS}), {r['dropped']} "
            f"inputs dropped over the cap; guest at {r['pps']:g} packets/s of 64 bytes, "
            f"epoch {r['epoch_ms']} ms"
        )
        print(
            f"  backup: {r['syncs']} sync points, {r['synced_entries_per_s']:.0f} entries/s "
            f"replayed and synced, {r['unequal_syncs']} unequal"
        )
        raw, piped = r["raw"], r["pipelined"]
        print(
            f"  raw nats-py: the same VmRan payloads ({r['payload_bytes']:.0f} bytes on "
            f"average), one ack awaited at a time: {raw['publishes_per_s']:.0f} publishes/s"
        )
        print(
            f"  raw nats-py pipelined ({piped['window']} in flight): "
            f"{piped['entries_per_s']:.0f} entries/s ({piped['publishes_per_s']:.0f} "
            f"publishes/s), ratio {r['pipelined_ratio']:.3f}"
        )
    if "failover" in result:
        r = result["failover"]
        first, over, resumed = (
            r["first_release"],
            r["failed_over"],
            r["first_release_after_failover"],
        )
        print()
        print(
            f"failover: {first['emulated_ms']:.0f} emulated ms ({first['wall_s']:.2f} s "
            f"wall), outputs gapless: {r['gapless']}"
        )
        print(
            f"  on NATS JetStream; crash of h1 to the first release of a seq above "
            f"{r['last_seq_before']} (the last released before it): a {r['first_release_type']}"
        )
        print(
            f"  VmFailedOver (on {r['taken_over_on']}): {over['emulated_ms']:.0f} emulated ms "
            f"({over['wall_s']:.2f} s wall); first release after it "
            f"({r['first_release_after_failover_type']}): "
            f"{resumed['emulated_ms']:.0f} emulated ms ({resumed['wall_s']:.2f} s wall)"
        )
        print(
            f"  outputs: {r['released']} released, seqs {r['first_seq']}..{r['last_seq']}, "
            f"{r['duplicates']} twice; protection restored on {r['new_backup_host']}; "
            f"{r['unequal_syncs']} unequal sync points"
        )
    if "latency" in result:
        r = result["latency"]
        print()
        print(
            f"output latency: held_ms p50 {r['held_p50_ms']:.0f} p99 {r['held_p99_ms']:.0f} "
            f"emulated ms (wall {r['held_p50_ms'] / opts.speed:.1f} / "
            f"{r['held_p99_ms'] / opts.speed:.1f} ms at speed {opts.speed:g})"
        )
        print(
            f"  {r['syncs']} sync points, {r['outputs']} outputs, max {r['held_max_ms']:.0f} "
            f"emulated ms; guest at {r['pps']:g} packets/s, epoch {r['epoch_ms']} ms; "
            f"{r['unequal_syncs']} unequal"
        )
        for mode, what in r["modes"].items():
            print(f"  {mode}: not measured ({what})")


def failures(result: dict[str, Any]) -> list[str]:
    found = []
    for name, r in result.items():
        if not isinstance(r, dict):
            continue
        found += [f"{name}: guest memory diverged: {d}" for d in r.get("diverged", [])]
        if r.get("unequal_syncs"):
            found.append(f"{name}: {r['unequal_syncs']} sync points with unequal memories")
    if "failover" in result and not result["failover"]["gapless"]:
        found.append("failover: the released outputs have a gap or a repeat")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--cases", default=",".join(CASES), help=f"of {','.join(CASES)} (all)")
    add("--speed", type=float, default=50.0, help="emulated s per wall s (50)")
    add("--tick", type=float, default=1.0, help="the hosts' tick, wall s (1.0)")
    add("--log-pps", type=float, default=10_000, help="log case: packets/s in (10000)")
    add("--log-epoch-ms", type=int, default=40, help="log case: epoch, emulated ms (40)")
    add("--log-seconds", type=float, default=15.0, help="log case: wall s counted (15)")
    add("--raw-seconds", type=float, default=5.0, help="each raw run at most (5)")
    add("--pps", type=float, default=200.0, help="failover, latency: packets/s in (200)")
    add("--epoch-ms", type=int, default=25, help="failover, latency: epoch (25)")
    add("--syncs", type=int, default=10, help="failover: sync points before and after (10)")
    add("--latency-seconds", type=float, default=10.0, help="latency: wall s (10)")
    add("--case-limit", type=float, default=90.0, help="a case's wall s at most (90)")
    add("--json", dest="as_json", action="store_true", help="print JSON too")
    opts = parser.parse_args(argv)
    opts.cases = [c for c in opts.cases.split(",") if c]
    if set(opts.cases) - set(CASES):
        parser.error(f"cases of {', '.join(CASES)}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the broker and its store go away.
    signal.signal(signal.SIGTERM, terminate)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vplane-ft-bench-") as tmp:
        broker = EmbeddedNats(Path(tmp) / "nats")
        try:
            broker.start()
            result = run_until_sigterm(run(broker.url, opts))
        finally:
            with signals_held():
                broker.stop()
    found = failures(result)
    report(result, opts)
    for failure in found:
        print(f"  FAILED: {failure}")
    elapsed = time.perf_counter() - started
    print(f"\nelapsed {elapsed:.1f} s")
    if opts.as_json:
        print(json.dumps(result | {"failures": found, "elapsed_seconds": elapsed}, indent=2))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
