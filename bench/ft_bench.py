"""Fault tolerance through NATS JetStream: how fast the FT log ships next to raw nats-py
publishing the same bytes, how long a failover keeps the outside world waiting (and
whether it loses or repeats an output), how long outputs are held before release, and
what checkpoint mode costs a 256 MiB guest (stuns, bytes an epoch, slowdown).

One embedded nats-server (temporary store, free loopback port, ``sync_interval:
always``). Each case runs a fresh stack in its own namespace in this process
(``tests/unit/stack.py``'s ``service_stack``): the hosts, both schedulers and the FT
service (``services/ft``); the migration coordinator is not started and HA's failure
detection is off (``ha_failures=0``: the crash is declared with ``CrashHost``). The
figures are the log's, read by a watcher in this process that stamps each event with the
wall time it arrived. A hosts tick is ``--tick`` wall seconds and ``--tick`` x
``--speed`` emulated ones; the FT service paces the primary's epochs on that clock.

The protected VM is a recorded guest: 16 MiB of full memory and ``GuestInputs`` (packets
from outside, each answered with a packet out), placed on ``h1``. ``ProtectVm`` (mode
``record-replay``) has its backup placed and its state copied (``BackupLoaded``), then
drives the primary an epoch at a time (``RunVm(record=True)``): each run's ``VmRan``
carries the inputs that reached the guest during it, which are the FT log's entries, and
the backup replays the run (``RunVm(logged=...)``); a sync point (``PairSynced``)
releases the run's outputs.

* **log** (the shipping rate): a guest at ``--log-pps`` packets/s of 64 bytes
  (``max_packet=64``), epoch ``--log-epoch-ms``. Once the backup is loaded, the
  primary's runs are counted for ``--log-seconds``. An FT log entry is one
  ``LoggedInput`` (a packet, a timer read or a device completion) of the protected
  primary's ``VmRan`` events (``len(VmRan.inputs)`` of its ``ft-run`` runs): each such
  event is appended to the log, acknowledged by the broker, and read back by the FT
  service, which then asks for the next run. The rate is the entries of the runs that
  arrived after the window's first one, over the wall seconds between the first arrival
  and the last. A run holds at most 512 inputs and 64 KiB of them (``MAX_RUN_INPUTS``,
  ``MAX_RUN_INPUT_BYTES``); the guest's NIC drops the rest (``VmRan.dropped``, shown).
  ``process CPU`` is this process's CPU time over the window per entry (every service
  and the watcher share this process). ``FT status`` is ``GetFtStatus`` at the window's
  end: the log entries (runs) the backup has not replayed yet, and the outputs held.
  Raw: once the stack has stopped, the same ``VmRan`` payloads (the bytes the watcher
  read back from the log) are published with nats-py to a stream configured as vplane's
  event log (file storage, discard new, a uuid ``Nats-Msg-Id`` each, one subject per
  aggregate), each publish's JetStream ack awaited before the next one, as the FT cycle
  has one run of a pair in flight at a time (``raw nats-py``: the log ratio's); then
  with ``RAW_WINDOW`` publishes in flight (``pipelined``, for reference). Each raw run
  goes through the payloads over and over for ``--raw-seconds`` (at most 512 MiB).
* **failover**: three hosts; a guest at ``--pps`` packets/s, epoch ``--epoch-ms``, its
  backup on ``h2``. After ``--syncs`` sync points, ``CrashHost(h1)``. The failover time
  runs from ``HostCrashed``'s emulated time (its envelope's ``sim_time``, the hosts'
  clock) to the first release (``PairSynced``, ``OutputsReleased``, ``PairResynced`` or
  ``PairDiverged`` of the VM: the FT service's clock) after ``VmFailedOver`` of a packet
  whose seq is above the last seq released before the crash; in emulated ms, and in wall
  seconds between the two events' ``occurred_at``. Before the VM fails over, the backup
  replays what is left of the log and those runs' outputs are released too (seqs above
  the last before the crash as well): the first of those is shown as ``first release
  after the crash``, and when ``VmFailedOver`` came. Outputs are gapless when every
  released seq, in log order, from the first release to the end (protection restored on
  ``h3`` and ``--syncs`` sync points more), follows the one before by one: none lost,
  none twice.
* **latency**: two hosts; a guest at ``--pps`` packets/s, epoch ``--epoch-ms``. For
  ``--latency-seconds`` once the backup is loaded, every ``PairSynced``'s ``held_ms``
  (emulated ms from the run logged to its sync point, its outputs held meanwhile): p50
  and p99, and the wall ms they stand for (``held_ms`` / ``--speed``). Record-replay
  first, then each other mode (``lockstep``, ``checkpoint``) in a stack of its own; a
  mode the service refuses (``not available yet``) is reported as not measured.

* **checkpoint**: checkpoint mode (``ProtectVm(mode=checkpoint)``, epoch
  ``--checkpoint-epoch-ms``) of a ``--checkpoint-mib`` guest at two dirty rates, each in
  a stack of its own at ``--checkpoint-speed`` (1: an emulated ms is a wall ms, so a
  25 ms epoch is 25 ms of wall time and the FT cycle's cost shows as it is; at the run's
  speed 50 an epoch would be 0.5 ms of wall time and no cycle through the log could keep
  up) with a ``--checkpoint-tick`` tick. ``GuestWrites`` sets the rate, in page writes
  per emulated second (each changes one 64-byte cache line): ``moderate`` 8,000/s with
  the default hot set (10 % of the pages take 90 % of the writes; the migration bench's
  ``below``), ``high`` 40,000/s all over memory (``hot_fraction=1.0``; between its
  ``near`` and ``above``, 27,466 and 45,776):
  200 and 1,000 page writes an epoch. The protected VM and an unprotected twin (``twin``:
  same size, rate, inputs and seed) are placed on ``h1``, the backup on ``h2``. Once the
  backup is loaded, the log is followed for ``--checkpoint-seconds``:

  - stun, wall: each of the primary's ``VmStunned`` to its next ``VmUnstunned`` from
    ``BackupLoaded`` to the window's end (the host's ``occurred_at`` stamps), p50/p99.
    The host takes the stun, the export of the pages still dirty and the resume in one
    batch of commands, so this is the time it spent on them.
  - bytes per epoch (the same sync points): the mean ``PairSynced.bytes`` (on the wire,
    diffs compressed) and ``whole_bytes`` (the same pages whole); the diff ratio is
    sum(bytes) over sum(whole_bytes); ``ahead`` and ``diffs`` are sum(``ahead_pages``)
    and sum(``diff_pages``) over sum(``pages``).
  - slowdown: guest seconds each VM ran between the first and the last of ``h1``'s
    telemetry samples in the window (emulated times, the hosts' ticks). The primary's are
    its ``ft-run`` ``VmRan`` events stamped in that span, ``seconds`` x ``cpu_share``
    each: it runs only the epochs the FT service asks for, paced by emulated time, so a
    cycle slower than the epoch leaves it fewer guest seconds than passed. The twin runs
    in the hosts' ticks (a step a tick, no event of its own): its progress shows only in
    the telemetry stream, so its guest seconds are each tick's emulated length over its
    ``VmSample.slowdown``, for every tick it was ``on``. Slowdown = 1 - primary / twin;
    the goal (<= 10 %, as VMware FT and Remus report) is printed met or missed, never a
    failure.

The run fails (exit status 1) when a record-replay or checkpoint sync point finds unequal
memories (or, in checkpoint mode, has no checksum), when a checkpoint rate is refused or
has no sync point, when a pair diverges (``PairDiverged``: nothing here injects a
divergence), when a hosts service logs ``GuestMemoryDiverged``, when protection ends for
a reason other than a failover, and when the failover's outputs have a gap or a
repeat.

    .venv/bin/python bench/ft_bench.py [--cases log,failover,latency,checkpoint] [--speed 50]
        [--log-pps 10000] [--log-epoch-ms 40] [--log-seconds 15] [--raw-seconds 3]
        [--pps 200] [--epoch-ms 25] [--syncs 10] [--latency-seconds 10]
        [--checkpoint-mib 256] [--checkpoint-epoch-ms 25] [--checkpoint-seconds 10]
        [--checkpoint-speed 1] [--checkpoint-tick 1.0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from _common import TARGET_RATIO, on_embedded_nats, until_changed
from ha_bench import stop_watch
from migration_bench import drop_namespace
from nats.js import api

from schemas import Envelope, Message
from schemas.ft import (
    BackupLoaded,
    FtMode,
    FtStatus,
    GetFtStatus,
    OutputsReleased,
    PairDiverged,
    PairResynced,
    PairSynced,
    ProtectionEnded,
    ProtectVm,
    VmFailedOver,
)
from schemas.host import CrashHost, GuestMemoryDiverged, HostCrashed, HostTelemetry
from schemas.memory import MAX_RUN_INPUTS, SentPacket, VmRan
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.service import CommandRejected
from schemas.vm import GuestInputs, GuestWrites, MemoryMode, VmCreated, VmStunned, VmUnstunned
from shared.bus import Logged, Stream
from shared.bus.nats import NatsBus
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace
from tests.unit.stack import Stack, service_stack

T = TypeVar("T")
VM = "web"
SERVICES = ("hosts", "scheduler-high", "scheduler-low", "ft")
CASES = ("log", "failover", "latency", "checkpoint")
# The output-latency case's modes, in this order: record-replay must be accepted.
MODES = (FtMode.RECORD_REPLAY, FtMode.LOCKSTEP, FtMode.CHECKPOINT)
# The shipping rate's goal, entries per wall second (the ratio's target is TARGET_RATIO).
GOAL_ENTRIES_PER_S = 20_000
# Waiting for any one thing in a case, at most.
WAIT = 45.0
# Raw's publishes in flight when pipelined.
RAW_WINDOW = 64
# Raw's bytes in one run at most (the store is a temporary directory).
RAW_MAX_BYTES = 512 * 2**20
RAW_STREAM = "BENCHFT"
RAW_PREFIX = "benchft"
# The events that release a protected VM's outputs.
RELEASES = (PairSynced, OutputsReleased, PairResynced, PairDiverged)


def progress(text: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Seen:
    """An event as the watcher read it: its envelope, its bytes in the log, when it
    arrived (perf_counter) and its place in the log."""

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
        return [
            (s.env.data, s) for s in self.events if isinstance(s.env.data, kind) and s.at > after
        ]

    async def until(self, check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        """``check()``'s first answer other than None, looked for whenever something arrives."""
        return await until_changed(self._changed, check, what, timeout)


@dataclass
class Case:
    stack: Stack
    rec: Recorder
    # The telemetry stream, when the case follows it (checkpoint: the twin's progress).
    telemetry: Recorder

    async def place(
        self,
        inputs: GuestInputs,
        *,
        vm: str = VM,
        mem_mib: int = 16,
        writes: GuestWrites | None = None,
    ) -> None:
        await self.stack.client.send(
            PlaceVm(
                vm=vm,
                priority=Owner.LOW,
                cpu=1,
                mem_mib=mem_mib,
                memory_mode=MemoryMode.FULL,
                seed=7,
                inputs=inputs,
                writes=writes,
                rules=PlacementRules(host_affinity=Affinity(must=["h1"])),
            )
        )
        await self.rec.until(
            lambda: True if any(e.vm == vm for e, _ in self.rec.of(VmCreated)) else None,
            f"{vm} created",
        )

    async def protect(self, cmd: ProtectVm) -> str | None:
        """Send ProtectVm: why it was refused, or None when its pair began."""
        [reply] = await self.stack.client.send_and_wait(cmd, timeout=WAIT)
        return reply.data.reason if isinstance(reply.data, CommandRejected) else None

    async def loaded(self, count: int = 1) -> Seen:
        """The ``count``-th BackupLoaded."""
        return await self.rec.until(
            lambda: s[count - 1][1] if len(s := self.rec.of(BackupLoaded)) >= count else None,
            f"backup {count} loaded",
        )

    async def syncs(self, count: int, after: float) -> None:
        await self.rec.until(
            lambda: True if len(self.rec.of(PairSynced, after)) >= count else None,
            f"{count} sync points",
        )

    def problems(self) -> dict[str, list[str]]:
        """What went wrong in the stack: guest memory that could not follow the log,
        pairs that diverged, protections that ended (a failover ends one: not counted)."""
        return {
            "memory_diverged": [
                f"{e.event_type} #{e.event_seq}: {e.error}"
                for e, _ in self.rec.of(GuestMemoryDiverged)
            ],
            "pairs_diverged": [
                f"{e.mode} entry {e.entry}: first different output {e.first_different}"
                for e, _ in self.rec.of(PairDiverged)
            ],
            "ended": [
                e.reason
                for e, _ in self.rec.of(ProtectionEnded)
                if not e.reason.startswith("failed over to ")
            ],
        }

    def releases(self) -> list[tuple[list[SentPacket], Seen]]:
        """Every release of the VM's outputs, in log order."""
        return [
            (e.released, s)
            for s in self.rec.events
            if isinstance(e := s.env.data, RELEASES) and e.vm == VM
        ]


@contextlib.asynccontextmanager
async def case_stack(
    url: str,
    opts: argparse.Namespace,
    hosts: int,
    *,
    speed: float | None = None,
    tick: float | None = None,
    telemetry: bool = False,
) -> AsyncIterator[Case]:
    """A fresh stack in its own namespace, followed from its first event (and telemetry
    sample, if asked); gone after. ``speed`` and ``tick``: the case's own, not the run's."""
    namespace = unique_namespace("ft")
    rec, samples = Recorder(), Recorder()
    settings: dict[str, object] = {
        "speed": opts.speed if speed is None else speed,
        "tick_seconds": opts.tick if tick is None else tick,
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
            subs = [sub]
            try:
                if telemetry:
                    subs.append(
                        await stack.bus.watch(Stream.TELEMETRY, (), samples.on_event, from_seq=1)
                    )
                yield Case(stack, rec, samples)
            finally:
                for each in subs:
                    await stop_watch(each)
    finally:
        await drop_namespace(url, namespace)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def primary_run(event: VmRan) -> bool:
    """One of the protected primary's FT runs (not its backup's replay)."""
    return event.vm == VM and event.tag.startswith("ft-run")


async def protected(case: Case, cmd: ProtectVm) -> Seen:
    """Protect the VM (record-replay must be accepted); its backup loaded."""
    refused = await case.protect(cmd)
    if refused is not None:
        raise RuntimeError(f"ProtectVm refused: {refused}")
    return await case.loaded()


# Log shipping


async def run_log(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    inputs = GuestInputs(packets_per_s=opts.log_pps, max_packet=64)
    async with case_stack(url, opts, hosts=2) as case:
        await case.place(inputs)
        await protected(case, ProtectVm(vm=VM, epoch_ms=opts.log_epoch_ms))
        progress(f"log: backup loaded; the primary's runs counted for {opts.log_seconds:g} s")
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(opts.log_seconds)
        end, cpu = time.perf_counter(), time.process_time() - cpu
        status = await ft_status(case)
        runs = [(e, s) for e, s in case.rec.of(VmRan, start) if primary_run(e) and s.at <= end]
        syncs = [e for e, s in case.rec.of(PairSynced, start) if s.at <= end]
        problems = case.problems()
    if len(runs) < 2:
        raise RuntimeError(f"log: {len(runs)} runs of the primary in {opts.log_seconds:g} s")
    first, last = runs[0][1].at, runs[-1][1].at
    counted = [e for e, _ in runs[1:]]
    entries = sum(len(e.inputs) for e in counted)
    vplane_rate = entries / (last - first)
    payloads = [(s.raw, len(e.inputs), e.aggregate()) for e, s in runs]
    progress(f"log: raw nats-py, {len(payloads)} VmRan payloads")
    raw = await raw_publish(url, payloads, window=1, seconds=opts.raw_seconds)
    piped = await raw_publish(url, payloads, window=RAW_WINDOW, seconds=opts.raw_seconds)
    sizes = [len(e.inputs) for e, _ in runs]
    return {
        "pps": opts.log_pps,
        "epoch_ms": opts.log_epoch_ms,
        "runs": len(counted),
        "entries": entries,
        "seconds": last - first,
        "vplane_entries_per_s": vplane_rate,
        "runs_per_s": len(counted) / (last - first),
        "entries_per_run": statistics.mean(sizes),
        "max_entries_per_run": max(sizes),
        "dropped": sum(e.dropped for e, _ in runs),
        "payload_bytes": statistics.mean(len(s.raw) for _, s in runs),
        "cpu_us_per_entry": cpu / sum(sizes) * 1e6,
        "cpu_share": cpu / (end - start),
        "syncs": len(syncs),
        "synced_entries_per_s": sum(e.inputs for e in syncs) / (end - start),
        "unequal_syncs": sum(not e.equal for e in syncs),
        "status": status,
        "raw": raw,
        "pipelined": piped,
        "log_ratio": vplane_rate / raw["entries_per_s"],
        "pipelined_ratio": vplane_rate / piped["entries_per_s"],
    } | problems


async def ft_status(case: Case) -> dict[str, Any] | None:
    """The pair as ``vplane ft status`` shows it, or None when no answer came in time."""
    try:
        reply = await case.stack.client.query(GetFtStatus(), timeout=10)
    except (TimeoutError, RuntimeError) as err:
        progress(f"GetFtStatus: {err!r}")
        return None
    if not isinstance(reply, FtStatus):
        return None
    pair = next((p for p in reply.pairs if p.vm == VM), None)
    return None if pair is None else pair.model_dump(mode="json")


async def raw_publish(
    url: str, payloads: Sequence[tuple[bytes, int, str]], *, window: int, seconds: float
) -> dict[str, Any]:
    """Publish ``payloads`` (bytes, entries, aggregate) in order, over and over, with
    ``window`` JetStream acks awaited together, for ``seconds`` (or ``RAW_MAX_BYTES``)."""
    nc = await nats.connect(url, name="bench-ft-raw", connect_timeout=2)
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"{RAW_STREAM}{tag.upper()}", f"{RAW_PREFIX}{tag}.evt"
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
        items = [(f"{prefix}.{agg.replace('/', '.')}", data, n) for data, n, agg in payloads]
        sent = entries = written = 0
        start = time.perf_counter()
        deadline = start + seconds
        while written < RAW_MAX_BYTES and time.perf_counter() < deadline:
            part = [items[(sent + i) % len(items)] for i in range(window)]
            futures = [
                await js.publish_async(
                    subject, data, headers={api.Header.MSG_ID: str(uuid.uuid4())}
                )
                for subject, data, _ in part
            ]
            await asyncio.gather(*futures)
            sent += len(part)
            entries += sum(n for _, _, n in part)
            written += sum(len(data) for _, data, _ in part)
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
        "mib_per_s": written / took / 2**20,
    }


# Failover


async def run_failover(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    async with case_stack(url, opts, hosts=3) as case:
        await case.place(GuestInputs(packets_per_s=opts.pps))
        loaded = await protected(case, ProtectVm(vm=VM, backup_host="h2", epoch_ms=opts.epoch_ms))
        await case.syncs(opts.syncs, loaded.at)
        progress(f"failover: {opts.syncs} sync points; CrashHost(h1)")
        began = time.perf_counter()
        await case.stack.client.send(CrashHost(host="h1"))
        [(_, crashed)] = await case.rec.until(lambda: case.rec.of(HostCrashed) or None, "crash")
        [(over, taken)] = await case.rec.until(
            lambda: case.rec.of(VmFailedOver) or None, "VmFailedOver"
        )
        reloaded = await case.loaded(2)
        await case.syncs(opts.syncs, reloaded.at)
        wall = time.perf_counter() - began
        out = case.releases()
        syncs = [(e, s.seq) for e, s in case.rec.of(PairSynced)]
        logged = [s.seq for e, s in case.rec.of(VmRan) if primary_run(e) and s.seq < crashed.seq]
        problems = case.problems()
    # The backup's backlog at the crash: runs logged that it had not replayed and synced.
    behind = len(logged) - len([1 for _, seq in syncs if seq < crashed.seq])
    replayed = len([1 for _, seq in syncs if crashed.seq < seq < taken.seq])
    before = max((o.seq for r, s in out if s.seq < crashed.seq for o in r), default=0)

    def first_release(after: Seen) -> Seen | None:
        return next(
            (s for r, s in out if s.seq > after.seq and any(o.seq > before for o in r)), None
        )

    after_crash, after_over = first_release(crashed), first_release(taken)
    if after_crash is None or after_over is None:
        raise RuntimeError("failover: no output released after the failover")
    seqs = [o.seq for r, _ in out for o in r]

    def since_crash(seen: Seen) -> dict[str, Any]:
        return {
            "event": seen.env.type,
            "emulated_ms": (seen.env.sim_time - crashed.env.sim_time) * 1000,
            "wall_s": (seen.env.occurred_at - crashed.env.occurred_at).total_seconds(),
        }

    new_backup = reloaded.env.data
    assert isinstance(new_backup, BackupLoaded)
    return {
        "bus": "NATS JetStream",
        "pps": opts.pps,
        "epoch_ms": opts.epoch_ms,
        "failover": since_crash(after_over),
        "first_release_after_crash": since_crash(after_crash),
        "failed_over": since_crash(taken),
        "taken_over_on": over.host,
        "new_backup_host": new_backup.backup_host,
        "last_seq_before": before,
        "released": len(seqs),
        "first_seq": seqs[0] if seqs else None,
        "last_seq": seqs[-1] if seqs else None,
        "repeated": len(seqs) - len(set(seqs)),
        "gapless": bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs))),
        "unequal_syncs": sum(not e.equal for e, _ in syncs),
        "behind_at_crash": behind,
        "replayed_before_takeover": replayed,
        "crash_to_end_s": wall,
    } | problems


# Output latency, in each mode the service carries out


async def run_latency(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Each mode in a stack of its own, record-replay first; a mode the service refuses
    is reported, not measured."""
    return {mode.value: await bounded(latency_of(url, opts, mode), opts) for mode in MODES}


async def latency_of(url: str, opts: argparse.Namespace, mode: FtMode) -> dict[str, Any]:
    async with case_stack(url, opts, hosts=2) as case:
        await case.place(GuestInputs(packets_per_s=opts.pps))
        refused = await case.protect(ProtectVm(vm=VM, mode=mode, epoch_ms=opts.epoch_ms))
        if refused is not None:
            if mode is FtMode.RECORD_REPLAY:
                raise RuntimeError(f"ProtectVm refused: {refused}")
            progress(f"latency: {mode.value} refused: {refused}")
            return {"refused": refused}
        loaded = await case.loaded()
        progress(
            f"latency: {mode.value}, backup loaded; sync points for {opts.latency_seconds:g} s"
        )
        await asyncio.sleep(opts.latency_seconds)
        status = await ft_status(case)
        seen = case.rec.of(PairSynced, loaded.at)
        ran = {e.first_step: s for e, s in case.rec.of(VmRan) if primary_run(e)}
        problems = case.problems()
    syncs = [e for e, _ in seen]
    held = [e.held_ms for e in syncs]
    if not held:
        return {"error": f"no sync point in {opts.latency_seconds:g} s"} | problems
    # The same hold by the wall clock: the primary's VmRan to its sync point, as their
    # producers stamped them (one process, one clock).
    wall = [
        (s.env.occurred_at - ran[e.first_step].env.occurred_at).total_seconds() * 1000
        for e, s in seen
        if e.first_step in ran
    ]
    return {
        "status": status,
        "held_first_ms": held[0],
        "held_last_ms": held[-1],
        "wall_p50_ms": percentile(wall, 0.50) if wall else None,
        "wall_p99_ms": percentile(wall, 0.99) if wall else None,
        "pps": opts.pps,
        "epoch_ms": opts.epoch_ms,
        "syncs": len(syncs),
        "outputs": sum(len(e.released) for e in syncs),
        "held_p50_ms": percentile(held, 0.50),
        "held_p99_ms": percentile(held, 0.99),
        "held_max_ms": max(held),
        "unequal_syncs": sum(not e.equal for e in syncs),
    } | problems


# Checkpoint mode: stuns, bytes an epoch, and the primary's slowdown


@dataclass(frozen=True)
class DirtyRate:
    """One of the checkpoint case's dirty rates: the guest's ``GuestWrites``."""

    name: str
    writes: GuestWrites
    about: str


# A page write changes one 64-byte cache line (``services/hosts/memory/workload.py``), so
# pages a guest writes often are the ones diffs pay off on. The rates follow the
# migration bench's ``below`` (0.25 of a 1 Gbit/s link's 30,518 pages/s, the default hot
# set) and, for the high one, between its ``near`` and ``above`` (0.9 and 1.5 of it,
# written all over memory): 200 and 1,000 page writes in a 25 ms epoch.
DIRTY_RATES = (
    DirtyRate(
        "moderate",
        GuestWrites(pages_per_s=8_000),
        "8,000 page writes/s, 90 % of them on a hot 10 % of the pages",
    ),
    DirtyRate(
        "high",
        GuestWrites(pages_per_s=40_000, hot_fraction=1.0),
        "40,000 page writes/s all over memory",
    ),
)
TWIN = "twin"
# How much less guest time the protected primary may get than its unprotected twin.
GOAL_SLOWDOWN = 0.10


async def run_checkpoint(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    """Each dirty rate in a stack of its own."""
    return {r.name: await bounded(checkpoint_of(url, opts, r), opts) for r in DIRTY_RATES}


async def checkpoint_of(url: str, opts: argparse.Namespace, rate: DirtyRate) -> dict[str, Any]:
    inputs = GuestInputs(packets_per_s=opts.pps)
    speed, tick = opts.checkpoint_speed, opts.checkpoint_tick
    async with case_stack(url, opts, hosts=2, speed=speed, tick=tick, telemetry=True) as case:
        mib = opts.checkpoint_mib
        await case.place(inputs, mem_mib=mib, writes=rate.writes)
        await case.place(inputs, vm=TWIN, mem_mib=mib, writes=rate.writes)
        cmd = ProtectVm(
            vm=VM, mode=FtMode.CHECKPOINT, backup_host="h2", epoch_ms=opts.checkpoint_epoch_ms
        )
        refused = await case.protect(cmd)
        if refused is not None:
            progress(f"checkpoint: refused: {refused}")
            return {"refused": refused}
        loaded = await case.loaded()
        progress(
            f"checkpoint {rate.name}: backup loaded; epochs followed for "
            f"{opts.checkpoint_seconds:g} s"
        )
        start = time.perf_counter()
        await asyncio.sleep(opts.checkpoint_seconds)
        end = time.perf_counter()
        status = await ft_status(case)
        problems = case.problems()
        events = [s for s in case.rec.events if loaded.at < s.at <= end]
        ticks = [
            (e, s)
            for e, s in case.telemetry.of(HostTelemetry, start)
            if e.host == "h1" and s.at <= end
        ]
    syncs = [e for s in events if isinstance(e := s.env.data, PairSynced) and e.vm == VM]
    if not syncs:
        return {"error": f"no sync point in {opts.checkpoint_seconds:g} s"} | problems
    return (
        {
            "dirty_rate": rate.name,
            "writes": rate.writes.model_dump(mode="json"),
            "about": rate.about,
            "mem_mib": opts.checkpoint_mib,
            "epoch_ms": opts.checkpoint_epoch_ms,
            "pps": opts.pps,
            "speed": speed,
            "tick": tick,
            "status": status,
        }
        | stuns(events)
        | epoch_bytes(syncs)
        | slowdown(events, ticks)
        | problems
    )


def stuns(events: Sequence[Seen]) -> dict[str, Any]:
    """Each epoch's stun of the primary, by the wall clock (its VmStunned to the next
    VmUnstunned, as the host stamped them) and as the FT service saw it (emulated)."""
    wall: list[float] = []
    stunned: Seen | None = None
    for s in events:
        event = s.env.data
        if isinstance(event, VmStunned) and event.vm == VM:
            stunned = s
        elif isinstance(event, VmUnstunned) and event.vm == VM and stunned is not None:
            wall.append((s.env.occurred_at - stunned.env.occurred_at).total_seconds() * 1000)
            stunned = None
    return {
        "stuns": len(wall),
        "stun_wall_p50_ms": percentile(wall, 0.50) if wall else None,
        "stun_wall_p99_ms": percentile(wall, 0.99) if wall else None,
        "stun_wall_max_ms": max(wall, default=None),
    }


def epoch_bytes(syncs: Sequence[PairSynced]) -> dict[str, Any]:
    """What an epoch sent: on the wire (diffs compressed) next to the same pages whole."""
    pages = sum(e.pages for e in syncs)
    whole = sum(e.whole_bytes for e in syncs)
    return {
        "epochs": len(syncs),
        "pages_per_epoch": pages / len(syncs),
        "bytes_per_epoch": statistics.mean(e.bytes for e in syncs),
        "whole_bytes_per_epoch": statistics.mean(e.whole_bytes for e in syncs),
        "diff_ratio": sum(e.bytes for e in syncs) / whole if whole else None,
        "ahead_share": sum(e.ahead_pages for e in syncs) / pages if pages else None,
        "diff_share": sum(e.diff_pages for e in syncs) / pages if pages else None,
        "held_p50_ms": percentile([e.held_ms for e in syncs], 0.50),
        "unequal_syncs": sum(
            not (e.equal and e.primary_checksum and e.primary_checksum == e.backup_checksum)
            for e in syncs
        ),
    }


def slowdown(events: Sequence[Seen], ticks: Sequence[tuple[HostTelemetry, Seen]]) -> dict[str, Any]:
    """Guest seconds the protected primary and its unprotected twin ran between two of
    h1's ticks (emulated times of its telemetry samples)."""
    if len(ticks) < 2:
        return {"slowdown": None, "slowdown_error": f"{len(ticks)} ticks of h1 in the window"}
    first, last = ticks[0], ticks[-1]
    begin, end = first[1].env.sim_time, last[1].env.sim_time
    # The twin runs in h1's ticks: a step each, as long as the tick, slowed by contention.
    twin = 0.0
    for (sample, seen), (_, after) in itertools.pairwise(ticks):
        vm = next((v for v in sample.vms if v.vm == TWIN), None)
        if vm is not None and vm.state == "on":
            twin += (after.env.sim_time - seen.env.sim_time) / vm.slowdown
    runs = [
        e
        for s in events
        if isinstance(e := s.env.data, VmRan) and primary_run(e) and begin <= s.env.sim_time < end
    ]
    primary = sum(e.seconds * e.cpu_share for e in runs)
    return {
        "emulated_s": end - begin,
        "wall_s_window": (last[1].at - first[1].at),
        "primary_runs": len(runs),
        "primary_guest_s": primary,
        "twin_guest_s": twin,
        "slowdown": 1 - primary / twin if twin else None,
    }


async def bounded(run: Coroutine[Any, Any, dict[str, Any]], opts: argparse.Namespace) -> Any:
    began = time.perf_counter()
    try:
        out = await asyncio.wait_for(run, opts.case_limit)
    except TimeoutError:
        raise RuntimeError(f"a case took more than {opts.case_limit:g} s") from None
    out["wall_s"] = time.perf_counter() - began
    return out


async def run(url: str, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in opts.cases:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        if name == "log":
            out[name] = await bounded(run_log(url, opts), opts)
        elif name == "failover":
            out[name] = await bounded(run_failover(url, opts), opts)
        elif name == "checkpoint":
            out[name] = await run_checkpoint(url, opts)
        else:
            out[name] = await run_latency(url, opts)
        print(f"  {name}: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return out


# The report


def met(ok: bool) -> str:
    return "met" if ok else "missed"


def report(result: dict[str, Any], opts: argparse.Namespace) -> None:
    print(
        "== FT through NATS JetStream (sync_interval: always): hosts, both schedulers and "
        "the FT service in-process"
    )
    print(
        f"a tick: {opts.tick:g} s wall, {opts.tick * opts.speed:g} s emulated (speed "
        f"{opts.speed:g}; checkpoint: its own); the guest: 16 MiB of full memory (checkpoint: "
        f"{opts.checkpoint_mib} MiB), GuestInputs; {result['commit']}"
    )
    if "log" in result:
        print()
        log_report(result["log"])
    if "failover" in result:
        print()
        failover_report(result["failover"])
    if "latency" in result:
        print()
        latency_report(result["latency"], opts)
    if "checkpoint" in result:
        print()
        checkpoint_report(result["checkpoint"])


def log_report(r: dict[str, Any]) -> None:
    raw, piped = r["raw"], r["pipelined"]
    print(
        f"log shipping: vplane {r['vplane_entries_per_s']:.0f} entries/s, raw nats-py "
        f"{raw['entries_per_s']:.0f} entries/s, log ratio {r['log_ratio']:.3f}"
    )
    print(
        f"  target: ratio >= {TARGET_RATIO:g} ({met(r['log_ratio'] >= TARGET_RATIO)}); "
        f"goal >= {GOAL_ENTRIES_PER_S:,} entries/s "
        f"({met(r['vplane_entries_per_s'] >= GOAL_ENTRIES_PER_S)})"
    )
    print(
        f"  vplane: {r['runs']} runs of the primary in {r['seconds']:.1f} s "
        f"({r['runs_per_s']:.1f} runs/s), {r['entries_per_run']:.0f} entries a run "
        f"(max {r['max_entries_per_run']}, cap {MAX_RUN_INPUTS}), {r['dropped']} inputs "
        f"dropped; guest at {r['pps']:g} packets/s of 64 bytes, epoch {r['epoch_ms']} ms"
    )
    print(
        f"  process CPU: {r['cpu_us_per_entry']:.0f} us an entry, {r['cpu_share']:.2f} "
        "CPU-s per wall s (one process: every service and the watcher)"
    )
    status = r["status"]
    behind = (
        "no FT status in time"
        if status is None
        else f"FT status at the end: {status['log_lag']} runs not replayed yet, "
        f"{status['held_outputs']} outputs held"
    )
    print(
        f"  backup: {r['syncs']} sync points, {r['synced_entries_per_s']:.0f} entries/s "
        f"replayed and synced, {r['unequal_syncs']} unequal; {behind}"
    )
    print(
        f"  raw nats-py: the same VmRan payloads ({r['payload_bytes']:.0f} bytes on average), "
        f"one ack awaited at a time: {raw['publishes_per_s']:.0f} publishes/s, "
        f"{raw['mib_per_s']:.0f} MiB/s"
    )
    print(
        f"  raw nats-py pipelined ({piped['window']} in flight): {piped['entries_per_s']:.0f} "
        f"entries/s ({piped['publishes_per_s']:.0f} publishes/s, {piped['mib_per_s']:.0f} "
        "MiB/s), ratio "
        f"{r['pipelined_ratio']:.4f}"
    )


def failover_report(r: dict[str, Any]) -> None:
    f, crash, over = r["failover"], r["first_release_after_crash"], r["failed_over"]
    print(
        f"failover: {f['emulated_ms']:.0f} emulated ms ({f['wall_s']:.2f} s wall), outputs "
        f"gapless: {r['gapless']}"
    )
    print(
        f"  on {r['bus']}: HostCrashed of h1 to the first release after VmFailedOver of a seq "
        f"above {r['last_seq_before']} (the last released before the crash): a {f['event']}"
    )
    print(
        f"  first release after the crash (the backup replaying what was left of the log): "
        f"{crash['emulated_ms']:.0f} emulated ms ({crash['wall_s']:.2f} s wall), a "
        f"{crash['event']}; VmFailedOver on {r['taken_over_on']}: {over['emulated_ms']:.0f} "
        f"emulated ms ({over['wall_s']:.2f} s wall)"
    )
    print(
        f"  the backup was {r['behind_at_crash']} runs behind at the crash; it replayed "
        f"{r['replayed_before_takeover']} (each a sync point) before the VM failed over"
    )
    print(
        f"  outputs: {r['released']} released, seqs {r['first_seq']}..{r['last_seq']}, "
        f"{r['repeated']} repeated; protection restored on {r['new_backup_host']}; "
        f"{r['unequal_syncs']} unequal sync points; guest at {r['pps']:g} packets/s, "
        f"epoch {r['epoch_ms']} ms"
    )


def latency_report(modes: dict[str, Any], opts: argparse.Namespace) -> None:
    for mode, r in modes.items():
        label = "output latency" if mode == FtMode.RECORD_REPLAY.value else f"  {mode}"
        if "refused" in r:
            print(f"{label}: not measured yet ({r['refused']})")
            continue
        if "error" in r:
            print(f"{label}: not measured ({r['error']})")
            continue
        print(
            f"{label}: held_ms p50 {r['held_p50_ms']:.0f} p99 {r['held_p99_ms']:.0f} emulated "
            f"ms (wall {r['held_p50_ms'] / opts.speed:.1f} / {r['held_p99_ms'] / opts.speed:.1f} "
            f"ms at speed {opts.speed:g})"
        )
        print(
            f"    {mode}: {r['syncs']} sync points, {r['outputs']} outputs, max "
            f"{r['held_max_ms']:.0f} emulated ms; guest at {r['pps']:g} packets/s, epoch "
            f"{r['epoch_ms']} ms; {r['unequal_syncs']} unequal"
        )
        if r["wall_p50_ms"] is not None:
            print(
                f"    by the wall clock (VmRan to PairSynced, occurred_at): p50 "
                f"{r['wall_p50_ms']:.1f} p99 {r['wall_p99_ms']:.1f} ms"
            )
        status = r["status"]
        lag = (
            ""
            if status is None
            else f"; FT status at the end: {status['log_lag']} runs not replayed yet, "
            f"{status['held_outputs']} outputs held"
        )
        print(
            f"    held_ms of the window's first sync point {r['held_first_ms']:.0f}, of its "
            f"last {r['held_last_ms']:.0f}{lag}"
        )


def checkpoint_report(rates: dict[str, Any]) -> None:
    for name, r in rates.items():
        if "refused" in r or "error" in r:
            print(f"checkpoint ({name}): not measured ({r.get('refused') or r['error']})")
            continue
        wall = (
            "no stun seen"
            if r["stun_wall_p50_ms"] is None
            else f"stun p50 {r['stun_wall_p50_ms']:.1f} ms p99 {r['stun_wall_p99_ms']:.1f} ms wall"
        )
        ratio = "n/a" if r["diff_ratio"] is None else f"{r['diff_ratio']:.2f}"
        ahead = "n/a" if r["ahead_share"] is None else f"{r['ahead_share']:.0%}"
        slow = (
            f"not measured ({r.get('slowdown_error')})"
            if r["slowdown"] is None
            else f"{r['slowdown']:.0%} vs unprotected twin (goal <= {GOAL_SLOWDOWN:.0%}: "
            f"{met(r['slowdown'] <= GOAL_SLOWDOWN)})"
        )
        print(
            f"checkpoint ({name}: {r['writes']['pages_per_s']:,} page writes/s): {wall}, "
            f"{r['bytes_per_epoch'] / 1024:.0f} KiB/epoch "
            f"with diffs vs {r['whole_bytes_per_epoch'] / 1024:.0f} KiB whole dirty pages, "
            f"diff ratio {ratio}, ahead {ahead}, slowdown {slow}"
        )
        diffs = "n/a" if r["diff_share"] is None else f"{r['diff_share']:.0%}"
        print(
            f"    {r['mem_mib']} MiB guest, {r['about']}, {r['pps']:g} packets/s in; epoch "
            f"{r['epoch_ms']} ms at speed {r['speed']:g} (tick {r['tick']:g} s wall)"
        )
        longest = "" if r["stun_wall_max_ms"] is None else f", max {r['stun_wall_max_ms']:.1f} ms"
        print(
            f"    {r['epochs']} epochs, {r['pages_per_epoch']:.0f} pages each ({diffs} as "
            f"diffs), {r['stuns']} stuns{longest}, outputs held p50 {r['held_p50_ms']:.0f} "
            f"emulated ms; {r['unequal_syncs']} unequal"
        )
        if r["slowdown"] is not None:
            print(
                f"    primary ran {r['primary_guest_s']:.2f} guest s ({r['primary_runs']} "
                f"runs) / twin ran {r['twin_guest_s']:.2f} guest s over the same "
                f"{r['emulated_s']:.1f} emulated s ({r['wall_s_window']:.1f} s wall)"
            )


def failures(result: dict[str, Any]) -> list[str]:
    runs: dict[str, dict[str, Any]] = {
        name: result[name] for name in ("log", "failover") if name in result
    }
    runs |= {f"latency {m}": r for m, r in result.get("latency", {}).items()}
    checkpoint = {f"checkpoint {n}": r for n, r in result.get("checkpoint", {}).items()}
    runs |= checkpoint
    # The case is there to measure checkpoint mode: not measuring it is a failure.
    found = [
        f"{name}: {r.get('refused') or r['error']}"
        for name, r in checkpoint.items()
        if "refused" in r or "error" in r
    ]
    for name, r in runs.items():
        found += [f"{name}: guest memory diverged: {d}" for d in r.get("memory_diverged", [])]
        found += [f"{name}: pair diverged: {d}" for d in r.get("pairs_diverged", [])]
        found += [f"{name}: protection ended: {d}" for d in r.get("ended", [])]
        if r.get("unequal_syncs") and not name.endswith(("lockstep", "checkpoint")):
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
    add("--log-pps", type=float, default=10_000, help="log: packets/s in (10000)")
    add("--log-epoch-ms", type=int, default=40, help="log: epoch, emulated ms (40)")
    add("--log-seconds", type=float, default=15.0, help="log: wall s counted (15)")
    add("--raw-seconds", type=float, default=3.0, help="log: each raw run, wall s (3)")
    add("--pps", type=float, default=200.0, help="failover, latency: packets/s in (200)")
    add("--epoch-ms", type=int, default=25, help="failover, latency: epoch, emulated ms (25)")
    add("--syncs", type=int, default=10, help="failover: sync points before and after (10)")
    add("--latency-seconds", type=float, default=10.0, help="latency: wall s a mode (10)")
    add("--checkpoint-mib", type=int, default=256, help="checkpoint: the VM's MiB (256)")
    add("--checkpoint-epoch-ms", type=int, default=25, help="checkpoint: epoch, emulated ms (25)")
    add("--checkpoint-seconds", type=float, default=10.0, help="checkpoint: wall s a rate (10)")
    add("--checkpoint-speed", type=float, default=1.0, help="checkpoint: its stack's speed (1)")
    add("--checkpoint-tick", type=float, default=1.0, help="checkpoint: its tick, wall s (1.0)")
    add("--case-limit", type=float, default=60.0, help="a case (a mode) in wall s, at most (60)")
    add("--json", dest="as_json", action="store_true", help="print JSON too")
    opts = parser.parse_args(argv)
    opts.cases = [c for c in opts.cases.split(",") if c]
    if set(opts.cases) - set(CASES):
        parser.error(f"cases of {', '.join(CASES)}")
    if opts.syncs < 1 or opts.log_seconds <= 0 or opts.latency_seconds <= 0:
        parser.error("--syncs >= 1; --log-seconds and --latency-seconds > 0")
    return opts


def commit() -> str:
    """The tree measured: its commit, and whether the product had uncommitted changes."""
    # The repository's root: the pathspecs below are relative to it.
    here = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=here)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "services", "shared", "schemas")
    return f"commit {head}" + (" + uncommitted changes" if changed else "")


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    started = time.perf_counter()
    tree = commit()
    result = on_embedded_nats("vplane-ft-bench-", lambda url: run(url, opts))
    result["commit"] = tree
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
