"""HA through the bus: failure detection, VM restarts, service restarts, memory a VM.

One embedded nats-server (temporary data dir, free loopback port, ``sync_interval:
always``) serves ``--hosts-processes`` hosts processes (``--hosts`` hosts between them,
each process with a host prefix of its own: p0h1.., p1h1..), scheduler-high and
scheduler-low, run as processes through ``Supervisor``. The driver, a ``NatsBus`` in
this process, then:

1. places ``--vms`` small VMs (every ``--high-every``-th one high priority), with at
   most ``--window`` unanswered, and waits until each is created;
2. for each k of ``--failures``, crashes k hosts that hold high VMs at once
   (``CrashHost``) and times, from each one's last heartbeat, its ``HostFailed``
   (detection) and the ``VmRestarted`` of its VMs;
3. stops scheduler-high and one hosts process and starts each again, timing the start
   to its ``ServiceStarted`` on the log the runs left;
4. reads each hosts process's resident memory before and after the VMs were placed.

    .venv/bin/python bench/ha_bench.py [--hosts N] [--vms N] [--failures 1,2] [--json]
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import run_until_sigterm, signals_held, terminate, to_the_end

from schemas import Envelope, Message
from schemas.ha import HostFailed, VmRestarted, VmRestartFailed
from schemas.host import CrashHost, HostCrashed, HostTelemetry
from schemas.pool import MHZ_PER_VCPU, Owner
from schemas.scheduling import PlaceVm, VmPlaced
from schemas.service import CommandRejected, ServiceStarted
from schemas.transfers import MigrationCompleted
from schemas.vm import VmCreated
from services.hosts.bootstrap import host_shape
from services.hosts.state import VCPU_PER_CORE
from shared.broker import EmbeddedNats
from shared.bus import Logged, Stream, Subscription
from shared.bus.nats import NatsBus
from shared.cli.supervisor import SERVICES, Child, Supervisor
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace

VM_CPU = 1
VM_MEM_MIB = 256
# Publishes waiting for their ack at once.
PUBLISH_IN_FLIGHT = 64
# Placement gives up when nothing it waits for arrives for this long (a stuck service).
STALL_SECONDS = 30.0
START_SECONDS = 60.0
# A restart rebuilds from the whole log: it may take far longer than the first start.
RESTART_SECONDS = 180.0
STOP_SECONDS = 30.0
CLOSE_SECONDS = 30.0
# A failure run waits this long beyond its detection window for the restarts.
RUN_SECONDS = 60.0
# A VM refused a restart is tried again each round: with no restart for this many rounds
# (and at least two ticks), the ones still refused are taken to stay so.
GRACE_ROUNDS = 20
POLL = 0.25
TARGET_KIB_PER_VM = 20.0

# (name, module, settings) as Supervisor takes them.
Spec = tuple[str, str, dict[str, str]]


@dataclass
class Options:
    hosts: int
    hosts_processes: int
    vms: int
    high_every: int
    window: int
    tick: float
    failure_ticks: int
    round: float
    ha_failures: int
    failures: tuple[int, ...]
    seed: int
    as_json: bool


def instance_of(name: str) -> str:
    return f"bench-{name}"


def hosts_specs(opts: Options) -> list[Spec]:
    """The hosts split as evenly as they go, each process naming its own."""
    base, extra = divmod(opts.hosts, opts.hosts_processes)
    return [
        (
            f"hosts-p{i}",
            "hosts",
            {
                "VPLANE_HOSTS": str(base + (i < extra)),
                "VPLANE_HOST_PREFIX": f"p{i}h",
                "VPLANE_INSTANCE": instance_of(f"hosts-p{i}"),
            },
        )
        for i in range(opts.hosts_processes)
    ]


def scheduler_specs() -> list[Spec]:
    return [
        (name, module, env | {"VPLANE_INSTANCE": instance_of(name)})
        for name, module, env in SERVICES
        if name.startswith("scheduler-")
    ]


def rss_kib(pid: int) -> float:
    """Resident set size of a process (Linux /proc; NaN elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return math.nan


def warnings(log: str) -> list[str]:
    """A service's JSON log lines at warning or worse, each as its message and details."""
    found = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("level") in {"warning", "error"}:
                skip = {"level", "timestamp", "service", "instance", "logger"}
                details = " ".join(f"{k}={v}" for k, v in entry.items() if k not in skip)
                found.append(details)
    return found[:5]


async def stop_watch(sub: Subscription) -> None:
    """``Watcher.stop`` cancels its task once, and nats-py's ``next_msg`` can lose that
    cancel (a message that arrived in the same instant), and then the stop waits forever;
    so the task is cancelled again until it has ended."""
    task = getattr(sub, "_task", None)
    if not isinstance(task, asyncio.Task):
        await sub.stop()
        return
    deadline = time.monotonic() + CLOSE_SECONDS
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        if time.monotonic() > deadline:
            raise RuntimeError(f"a watcher did not stop in {CLOSE_SECONDS:.0f}s")


@dataclass
class Crashed:
    """One crashed host: what it held at the crash, and what was heard of it."""

    host: str
    vms: list[str]
    high: list[str]
    # Its last heartbeat, as the bench's telemetry watcher saw it (wall seconds, tick).
    beat: tuple[float, int] | None = None


@dataclass
class Log:
    """What the driver has read from the event log so far."""

    announced: dict[str, tuple[ServiceStarted, float]] = field(default_factory=dict)
    priority: dict[str, Owner] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)
    last_created: float = 0.0
    rejected: dict[str, str] = field(default_factory=dict)
    # Other rejections (first few): nothing else the driver sends should be refused.
    other_rejections: list[str] = field(default_factory=list)
    crashed: dict[str, float] = field(default_factory=dict)
    failed: dict[str, tuple[HostFailed, float]] = field(default_factory=dict)
    # By (vm, the host it left): when it was restarted, and when it could not be.
    restarted: dict[tuple[str, str], float] = field(default_factory=dict)
    unrestarted: dict[tuple[str, str], str] = field(default_factory=dict)
    last_restart: float = 0.0
    failed_seen: float = 0.0
    seen: int = 0


class Driver:
    """The services as processes; one ``NatsBus`` sends commands and follows the log."""

    def __init__(self, url: str, namespace: str, sup: Supervisor) -> None:
        self.bus = NatsBus(url, namespace=namespace, client_name="bench-ha")
        self.sup = sup
        self.log = Log()
        self.on_answer: Callable[[], None] | None = None
        self._changed = asyncio.Event()
        self._watchers: list[Subscription] = []

    async def start(self) -> None:
        await self.bus.start()
        filters = ("vm.>", "service.>", "ha.>", "host.>")
        self._watchers.append(await self.bus.watch(Stream.EVENTS, filters, self._on_event))

    async def _on_event(self, entry: Logged) -> None:
        env = entry.envelope
        if env is None:
            return
        self.log.seen += 1
        self._fold(env)
        self._changed.set()

    def _fold(self, env: Envelope[Message]) -> None:
        log, at = self.log, env.occurred_at.timestamp()
        match env.data:
            case ServiceStarted() as data:
                log.announced[data.instance] = (data, at)
            case VmPlaced() as data:
                self._answer(data.vm)
            case CommandRejected() as data:
                self._rejected(data)
            case VmCreated() as data:
                log.where[data.vm] = data.host
                log.created.add(data.vm)
                log.last_created = time.perf_counter()
            case MigrationCompleted() as data:
                log.where[data.vm] = data.target
            case VmRestarted() as data:
                log.where[data.vm] = data.host
                log.restarted.setdefault((data.vm, data.from_host), at)
                log.last_restart = time.monotonic()
            case VmRestartFailed() as data:
                log.unrestarted.setdefault((data.vm, data.host), data.reason)
            case HostCrashed() as data:
                log.crashed.setdefault(data.host, at)
            case HostFailed() as data:
                log.failed[data.host] = (data, at)
                log.failed_seen = time.monotonic()

    def _answer(self, vm: str) -> None:
        if vm in self.log.answered:
            return
        self.log.answered.add(vm)
        if self.on_answer is not None:
            self.on_answer()

    def _rejected(self, data: CommandRejected) -> None:
        if data.command_type == "PlaceVm":
            vm = data.about.removeprefix("vm/")
            self.log.rejected.setdefault(vm, data.reason)
            self._answer(vm)
        elif len(self.log.other_rejections) < 5:
            self.log.other_rejections.append(f"{data.command_type} {data.about}: {data.reason}")

    async def until(
        self, done: Callable[[], bool], *, limit: float, stall: float | None = None
    ) -> bool:
        """Wait until ``done()``: False after ``limit`` seconds, or after ``stall`` seconds
        without a new event in the log."""
        deadline = time.monotonic() + limit
        seen, last = self.log.seen, time.monotonic()
        while not done():
            now = time.monotonic()
            if self.log.seen != seen:
                seen, last = self.log.seen, now
            if now > deadline or (stall is not None and now - last > stall):
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), POLL)
            self.alive()
        return True

    def alive(self) -> None:
        for child in self.sup.crashed():
            lines = child.log_path.read_text(errors="replace").splitlines()[-15:]
            tail = "\n".join(lines)
            raise RuntimeError(f"{child.name} exited with {child.exit_code}; its log ends:\n{tail}")

    def child(self, name: str) -> Child:
        return next(c for c in reversed(self.sup.children) if c.name == name)

    async def launch(self, specs: Sequence[Spec], limit: float) -> float:
        """Start services; the seconds until each has logged ServiceStarted."""
        for name, _, _ in specs:
            self.log.announced.pop(instance_of(name), None)
        wanted = {instance_of(name) for name, _, _ in specs}
        start = time.perf_counter()
        self.sup.start(tuple(specs))
        if not await self.until(lambda: wanted <= self.log.announced.keys(), limit=limit):
            missing = sorted(wanted - self.log.announced.keys())
            raise RuntimeError(f"{', '.join(missing)}: no ServiceStarted within {limit:.0f}s")
        return time.perf_counter() - start

    async def stop_child(self, child: Child) -> tuple[float, list[str]]:
        """SIGTERM one service and wait for it to exit (the event loop keeps running): the
        seconds it took, and the warnings it logged meanwhile."""
        offset = child.log_path.stat().st_size
        start = time.perf_counter()
        child.proc.send_signal(signal.SIGTERM)
        while child.proc.poll() is None:
            if time.perf_counter() - start > STOP_SECONDS:
                child.proc.kill()
                child.proc.wait()
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - start
        # Stopped on purpose: not a crash for ``alive`` to report.
        self.sup.children.remove(child)
        with child.log_path.open("rb") as f:
            f.seek(offset)
            return seconds, warnings(f.read().decode(errors="replace"))

    async def watch_beats(
        self, hosts: Sequence[str], beats: dict[str, tuple[float, int]]
    ) -> Subscription:
        """Follow these hosts' telemetry only: all of it would cost this process a core."""

        async def on_sample(entry: Logged) -> None:
            env = entry.envelope
            if env is not None and isinstance(env.data, HostTelemetry):
                beats[env.data.host] = (env.occurred_at.timestamp(), env.data.tick)
                self._changed.set()

        filters = tuple(f"host.{h}" for h in hosts)
        return await self.bus.watch(Stream.TELEMETRY, filters, on_sample)

    async def close(self) -> None:
        for sub in self._watchers:
            await stop_watch(sub)
        await asyncio.wait_for(self.bus.close(), CLOSE_SECONDS)


# -- placement ---------------------------------------------------------------------------


def vm_names(count: int) -> list[str]:
    return [f"vm-{i:05d}" for i in range(count)]


async def send_all(d: Driver, opts: Options) -> tuple[int, bool]:
    """Send every PlaceVm with at most ``window`` unanswered: (sent, stalled)."""
    slots = asyncio.Semaphore(opts.window)
    publishing = asyncio.Semaphore(PUBLISH_IN_FLIGHT)
    d.on_answer = slots.release

    def published(_: asyncio.Task[None]) -> None:
        publishing.release()

    sent = 0
    async with asyncio.TaskGroup() as group:
        for i, name in enumerate(vm_names(opts.vms)):
            if not await d.until(lambda: not slots.locked(), limit=math.inf, stall=STALL_SECONDS):
                return sent, True
            await slots.acquire()
            await publishing.acquire()
            prio = Owner.HIGH if i % opts.high_every == 0 else Owner.LOW
            d.log.priority[name] = prio
            command = PlaceVm(vm=name, priority=prio, cpu=VM_CPU, mem_mib=VM_MEM_MIB)
            env = Envelope.wrap(command, producer="bench")
            group.create_task(d.bus.send(env)).add_done_callback(published)
            sent += 1
    return sent, False


async def place(d: Driver, opts: Options) -> dict[str, Any]:
    """Place the VMs and wait until each is created or refused (or placement stalls)."""
    log = d.log
    start = time.perf_counter()
    sent, stalled = await send_all(d, opts)
    send_seconds = time.perf_counter() - start
    # At 10 VMs/s at least, or it is not going to finish.
    limit = 60.0 + opts.vms / 10
    finished = await d.until(
        lambda: len(log.created) + len(log.rejected) >= sent, limit=limit, stall=STALL_SECONDS
    )
    d.on_answer = None
    seconds = (log.last_created or time.perf_counter()) - start
    return {
        "vms": opts.vms,
        "high": sum(p is Owner.HIGH for p in log.priority.values()),
        "sent": sent,
        "created": len(log.created),
        "rejected": len(log.rejected),
        "rejections": sorted(set(log.rejected.values()))[:5],
        "timed_out": stalled or not finished,
        "send_seconds": send_seconds,
        "seconds": seconds,
        "created_per_s": len(log.created) / seconds if seconds > 0 else 0.0,
    }


# -- memory ------------------------------------------------------------------------------


def rss_of(d: Driver, specs: Sequence[Spec]) -> dict[str, float]:
    return {name: rss_kib(d.child(name).proc.pid) for name, _, _ in specs}


def memory(
    d: Driver, specs: Sequence[Spec], before: dict[str, float], after: dict[str, float]
) -> dict[str, Any]:
    """RSS a VM: what each hosts process grew by, over the VMs its hosts run."""
    out: dict[str, Any] = {}
    for name, _, env in specs:
        prefix = env["VPLANE_HOST_PREFIX"]
        vms = sum(
            host.startswith(prefix) and host[len(prefix) :].isdigit()
            for host in d.log.where.values()
        )
        grown = after[name] - before[name]
        out[name] = {
            "hosts": int(env["VPLANE_HOSTS"]),
            "vms": vms,
            "rss_before_kib": before[name],
            "rss_after_kib": after[name],
            "kib_per_vm": grown / vms if vms else math.nan,
        }
    return out


# -- failure runs ------------------------------------------------------------------------


def pick(d: Driver, k: int, rng: random.Random) -> list[str]:
    """k hosts that hold high VMs now and were never crashed."""
    log = d.log
    holding = {
        host
        for vm, host in log.where.items()
        if log.priority.get(vm) is Owner.HIGH and host not in log.crashed
    }
    holding -= log.failed.keys()
    return rng.sample(sorted(holding), min(k, len(holding)))


def held(d: Driver, host: str) -> Crashed:
    vms = sorted(vm for vm, at in d.log.where.items() if at == host)
    high = [vm for vm in vms if d.log.priority.get(vm) is Owner.HIGH]
    return Crashed(host, vms, high)


def settled(d: Driver, victims: Sequence[Crashed], grace: float) -> bool:
    """Each host declared failed and each VM restarted; or, past ``grace`` seconds since
    the last restart, each VM left refused at least once."""
    log = d.log
    if any(v.host not in log.failed for v in victims):
        return False
    left = [(vm, v.host) for v in victims for vm in v.vms if (vm, v.host) not in log.restarted]
    if not left:
        return True
    quiet = time.monotonic() - max(log.last_restart, log.failed_seen) > grace
    return quiet and all(key in log.unrestarted for key in left)


async def crash(d: Driver, hosts: Sequence[str], opts: Options) -> tuple[list[Crashed], bool]:
    """Crash the hosts together, each one's last heartbeat noted; wait for the outcome."""
    beats: dict[str, tuple[float, int]] = {}
    watcher = await d.watch_beats(hosts, beats)
    try:
        # A heartbeat of each seen first: then the last one before the crash is too.
        await d.until(lambda: beats.keys() >= set(hosts), limit=3 * opts.tick + 5)
        victims = [held(d, h) for h in hosts]
        envs = [Envelope.wrap(CrashHost(host=h), producer="bench") for h in hosts]
        await d.bus.send_many(envs)
        limit = RUN_SECONDS + (opts.failure_ticks + 2) * opts.tick
        grace = max(GRACE_ROUNDS * opts.round, 2 * opts.tick)
        done = await d.until(lambda: settled(d, victims, grace), limit=limit)
    finally:
        await stop_watch(watcher)
    for v in victims:
        v.beat = beats.get(v.host)
    return victims, not done


def since(beat: float, stamps: Sequence[float]) -> float | None:
    return max(stamps) - beat if stamps else None


def heartbeat(d: Driver, v: Crashed) -> dict[str, Any]:
    """The host's last heartbeat: as the bench's watcher saw it, else as the detector did."""
    failed = d.log.failed.get(v.host)
    declared = failed[0].last_heartbeat_at if failed is not None else None
    at = v.beat[0] if v.beat is not None else declared.timestamp() if declared else None
    return {
        "at": at,
        "tick": v.beat[1] if v.beat is not None else failed[0].last_tick if failed else None,
        # Zero when the detector's last heartbeat is the one this watcher saw last.
        "vs_detector_s": v.beat[0] - declared.timestamp() if v.beat and declared else None,
    }


def restarts(d: Driver, v: Crashed, beat: float | None) -> dict[str, Any]:
    """Its VMs' restarts: how many, the last one from the heartbeat, and the refusals."""
    log = d.log
    done = {vm: log.restarted[(vm, v.host)] for vm in v.vms if (vm, v.host) in log.restarted}
    refused = {vm: log.unrestarted[(vm, v.host)] for vm in v.vms if (vm, v.host) in log.unrestarted}
    high = [done[vm] for vm in v.high if vm in done]
    return {
        "restart_high_s": max(high) - beat if beat is not None and high else None,
        "restart_all_s": max(done.values()) - beat if beat is not None and done else None,
        "high_restarted": len(high),
        "all_restarted": len(done),
        # VmRestartFailed, and of those VMs the ones a later round restarted after all.
        "restart_failed": len(refused),
        "refused_then_restarted": len(refused.keys() & done.keys()),
        "left_refused": sorted({refused[vm] for vm in refused.keys() - done.keys()})[:3],
    }


def host_figures(d: Driver, v: Crashed) -> dict[str, Any]:
    """From the host's last heartbeat: its detection and its VMs' restarts."""
    failed, crashed = d.log.failed.get(v.host), d.log.crashed.get(v.host)
    beat = heartbeat(d, v)
    at = beat["at"]
    return {
        "host": v.host,
        "vms": len(v.vms),
        "high_vms": len(v.high),
        "last_heartbeat_tick": beat["tick"],
        "heartbeat_vs_detector_s": beat["vs_detector_s"],
        "crash_logged_after_beat_s": crashed - at if crashed and at is not None else None,
        "detection_s": failed[1] - at if failed is not None and at is not None else None,
        **restarts(d, v, at),
        "detector_vms_differ": sorted(set(failed[0].vms) ^ set(v.vms)) if failed else None,
    }


def worst(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return max(values) if len(values) == len(rows) and values else None


async def failure_run(d: Driver, k: int, opts: Options, rng: random.Random) -> dict[str, Any]:
    hosts = pick(d, k, rng)
    if len(hosts) < k:
        return {"k": k, "skipped": f"only {len(hosts)} uncrashed hosts hold high VMs"}
    before = set(d.log.failed)
    start = time.perf_counter()
    victims, timed_out = await crash(d, hosts, opts)
    rows = [host_figures(d, v) for v in victims]
    detection, restart = worst(rows, "detection_s"), worst(rows, "restart_high_s")
    high = sum(r["high_vms"] for r in rows)
    return {
        "k": k,
        "hosts": rows,
        "detection_s": detection,
        "restart_high_s": restart,
        "restart_all_s": worst(rows, "restart_all_s"),
        "ratio": restart / detection if restart is not None and detection else None,
        "high_vms": high,
        "high_restarted": sum(r["high_restarted"] for r in rows),
        "high_share": sum(r["high_restarted"] for r in rows) / high if high else math.nan,
        "restart_failed": sum(r["restart_failed"] for r in rows),
        "refused_then_restarted": sum(r["refused_then_restarted"] for r in rows),
        "unexpected_failed": sorted(set(d.log.failed) - before - set(hosts)),
        "timed_out": timed_out,
        "waited_s": time.perf_counter() - start,
    }


# -- service restarts --------------------------------------------------------------------


async def restart(d: Driver, spec: Spec, opts: Options) -> dict[str, Any]:
    """Stop a service, start it again: how long until it has rebuilt and announced itself."""
    name = spec[0]
    before = set(d.log.failed)
    stop_s, stop_warnings = await d.stop_child(d.child(name))
    events = await d.bus.last_seq()
    launched = time.time()
    seen_s = await d.launch((spec,), RESTART_SECONDS)
    started, at = d.log.announced[instance_of(name)]
    # Hosts silent while their process was away are declared failed within two ticks.
    await asyncio.sleep(2 * opts.tick)
    return {
        "service": name,
        "log_events": events,
        "rebuilt_events": started.rebuilt_events,
        "stop_s": stop_s,
        "stop_warnings": stop_warnings,
        "start_to_announced_s": at - launched,
        "start_to_seen_s": seen_s,
        "declared_failed_meanwhile": sorted(set(d.log.failed) - before),
    }


# -- the whole run -----------------------------------------------------------------------


async def measure(d: Driver, opts: Options, url: str) -> dict[str, Any]:
    hosts, schedulers = hosts_specs(opts), scheduler_specs()
    # The schedulers rebuild their ledgers from the hosts registered by then.
    started = {"hosts_s": await d.launch(hosts, START_SECONDS)}
    started["schedulers_s"] = await d.launch(schedulers, START_SECONDS)
    rss_before = rss_of(d, hosts)
    placement = await place(d, opts)
    # Telemetry has sampled every new VM by then.
    await asyncio.sleep(2 * opts.tick)
    mem = memory(d, hosts, rss_before, rss_of(d, hosts))
    rng = random.Random(opts.seed)
    runs = [await failure_run(d, k, opts, rng) for k in opts.failures]
    high = next(s for s in schedulers if s[0] == "scheduler-high")
    restarts = [await restart(d, spec, opts) for spec in (high, hosts[0])]
    return {
        "url": url,
        "started": started,
        "placement": placement,
        "memory": mem,
        "target_kib_per_vm": TARGET_KIB_PER_VM,
        "failures": runs,
        "restarts": restarts,
        "other_rejections": d.log.other_rejections,
    }


async def drive(url: str, namespace: str, sup: Supervisor, opts: Options) -> dict[str, Any]:
    d = Driver(url, namespace, sup)
    try:
        await d.start()
        return await measure(d, opts, url)
    finally:
        await to_the_end(d.close)


def settings_of(opts: Options) -> dict[str, Any]:
    return {
        "hosts": opts.hosts,
        "hosts_processes": opts.hosts_processes,
        "vms": opts.vms,
        "high_every": opts.high_every,
        "window": opts.window,
        "vm": {"cpu": VM_CPU, "mem_mib": VM_MEM_MIB},
        "tick_s": opts.tick,
        "failure_ticks": opts.failure_ticks,
        "round_s": opts.round,
        "ha_failures": opts.ha_failures,
        "failures": list(opts.failures),
        "seed": opts.seed,
    }


def run_embedded(opts: Options) -> dict[str, Any]:
    """The server and the services live in a temporary directory; both always stop."""
    with tempfile.TemporaryDirectory(prefix="vplane-bench-") as tmp:
        broker = EmbeddedNats(Path(tmp) / "nats")
        namespace = unique_namespace("bha")
        env = {
            "VPLANE_BUS_URL": broker.url,
            "VPLANE_NAMESPACE": namespace,
            "VPLANE_ROUND_SECONDS": repr(opts.round),
            "VPLANE_TICK_SECONDS": repr(opts.tick),
            "VPLANE_FAILURE_TICKS": str(opts.failure_ticks),
            "VPLANE_HA_FAILURES": str(opts.ha_failures),
            "VPLANE_LOG_FORMAT": "json",
        }
        # The services inherit this environment: other VPLANE_* settings apply to them.
        inherited = {
            k: v for k, v in os.environ.items() if k.startswith("VPLANE_") and k not in env
        }
        sup = Supervisor(env, Path(tmp) / "logs")
        try:
            broker.start()
            result = run_until_sigterm(drive(broker.url, namespace, sup, opts))
            return settings_of(opts) | result | {"inherited_env": inherited}
        finally:
            with signals_held():
                sup.stop()
                broker.stop()


# -- the report --------------------------------------------------------------------------


def secs(value: float | None, width: int = 8) -> str:
    return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}}"


def report_header(r: dict[str, Any]) -> None:
    shape = host_shape("h1")
    tick, ticks = r["tick_s"], r["failure_ticks"]
    print("== HA through the bus: failure detection, VM restarts, service restarts")
    print(
        f"nats-server at {r['url']} (sync_interval: always); {r['hosts_processes']} hosts "
        f"processes with {r['hosts']} hosts of {shape.cpu_cores} cores, "
        f"{shape.mem_mib // 1024} GiB between them; scheduler-high and scheduler-low"
    )
    print(
        f"telemetry every {tick:g} s; a host silent {ticks} ticks ({ticks * tick:g} s) is "
        f"failed, so detection is expected in {ticks * tick:g} to {(ticks + 2) * tick:g} s; "
        f"a round every {r['round_s'] * 1000:g} ms; HA spare for {r['ha_failures']} hosts"
    )
    if r["inherited_env"]:
        given = " ".join(f"{k}={v}" for k, v in sorted(r["inherited_env"].items()))
        print(f"settings from the environment, for the services too: {given}")
    s = r["started"]
    print(
        f"services up: hosts in {s['hosts_s']:.1f} s, "
        f"then the schedulers in {s['schedulers_s']:.1f} s"
    )
    print()


def report_placement(r: dict[str, Any]) -> None:
    p = r["placement"]
    print(
        f"placement: {p['vms']} VMs of {r['vm']['cpu']} vCPU, {r['vm']['mem_mib']} MiB "
        f"({p['high']} high, every {r['high_every']}th), at most {r['window']} unanswered"
    )
    print(
        f"  {p['created']} created in {p['seconds']:.1f} s ({p['created_per_s']:.0f} VMs/s; "
        f"sent in {p['send_seconds']:.1f} s), {p['rejected']} rejected"
    )
    if p["timed_out"]:
        print(f"  WARNING: placement stopped waiting: {p['sent']} sent, {p['created']} created")
    for reason in p["rejections"]:
        print(f"  rejected: {reason}")
    print()


def report_memory(r: dict[str, Any]) -> None:
    print(
        f"memory of the hosts processes, resident, before and after placing "
        f"(target < {r['target_kib_per_vm']:g} KiB a VM):"
    )
    print(
        f"  {'process':<12}{'hosts':>6}{'VMs':>7}{'before MiB':>12}{'after MiB':>11}{'KiB/VM':>8}"
    )
    for name, m in r["memory"].items():
        print(
            f"  {name:<12}{m['hosts']:6d}{m['vms']:7d}{m['rss_before_kib'] / 1024:12.1f}"
            f"{m['rss_after_kib'] / 1024:11.1f}{m['kib_per_vm']:8.1f}"
        )
    print()


def run_notes(run: dict[str, Any]) -> list[str]:
    """What in a failure run is not as HA promises, or not as this benchmark expects."""
    notes = []
    if run["timed_out"]:
        notes.append(f"stopped waiting after {run['waited_s']:.0f} s")
    if run["unexpected_failed"]:
        notes.append(f"also declared failed: {', '.join(run['unexpected_failed'])}")
    for h in run["hosts"]:
        if h["detector_vms_differ"]:
            notes.append(f"{h['host']}: HostFailed.vms differs on {h['detector_vms_differ']}")
        gap = h["heartbeat_vs_detector_s"]
        if gap is not None and abs(gap) > 0.001:
            notes.append(
                f"{h['host']}: its last heartbeat seen here is {gap:+.3f} s from "
                "HostFailed.last_heartbeat_at"
            )
        notes.extend(f"{h['host']}: not restarted: {why}" for why in h["left_refused"])
    return notes


def report_run(run: dict[str, Any], ha_failures: int) -> None:
    if "skipped" in run:
        print(f"  k={run['k']}: skipped, {run['skipped']}")
        return
    for h in run["hosts"]:
        print(
            f"  {run['k']:>2}  {h['host']:<10}{h['vms']:5d}{h['high_vms']:5d}"
            f"{secs(h['detection_s'], 11)}{secs(h['restart_high_s'], 10)}"
            f"{secs(h['restart_all_s'], 10)}"
            f"{h['high_restarted']:>6d}/{h['high_vms']:<4d}{h['all_restarted']:>6d}/{h['vms']:<4d}"
            f"{h['restart_failed']:8d}{h['refused_then_restarted']:8d}"
        )
    detection, restart = run["detection_s"], run["restart_high_s"]
    ratio = f"{run['ratio']:.2f}" if run["ratio"] is not None else "-"
    print(
        f"      k={run['k']}: detection {secs(detection, 0)} s alone (the baseline), detection + "
        f"restart of the high VMs {secs(restart, 0)} s, ratio {ratio}; high VMs restarted "
        f"{run['high_restarted']}/{run['high_vms']} ({run['high_share']:.0%}; "
        f"{'target 100%' if ha_failures >= run['k'] else 'no target: more hosts than the spare'})"
    )
    if run["restart_failed"]:
        print(
            f"      {run['restart_failed']} VmRestartFailed; a later round restarted "
            f"{run['refused_then_restarted']} of those VMs after all"
        )
    for note in run_notes(run):
        print(f"      WARNING: {note}")


def report_failures(r: dict[str, Any]) -> None:
    print(
        "failures: k hosts crashed at once (CrashHost); seconds from each host's last "
        "heartbeat to its HostFailed, and to the last VmRestarted of its high VMs and of all"
    )
    print(
        f"  {'k':>2}  {'host':<10}{'VMs':>5}{'high':>5}{'detection':>11}{'+high':>10}"
        f"{'+all':>10}{'high ok':>11}{'all ok':>11}{'refused':>8}{'then ok':>8}"
    )
    for run in r["failures"]:
        report_run(run, r["ha_failures"])
    print()


def report_restarts(r: dict[str, Any]) -> None:
    print(
        "service restarts on the log the runs left: SIGTERM, start again, until its ServiceStarted"
    )
    print(
        f"  {'service':<16}{'log events':>11}{'rebuilt':>9}{'stop s':>8}"
        f"{'start s':>9}{'(seen s)':>10}"
    )
    for s in r["restarts"]:
        print(
            f"  {s['service']:<16}{s['log_events']:11d}{s['rebuilt_events']:9d}"
            f"{s['stop_s']:8.2f}{s['start_to_announced_s']:9.2f}{s['start_to_seen_s']:10.2f}"
        )
    for s in r["restarts"]:
        for line in s["stop_warnings"]:
            print(f"  NOTE: {s['service']} logged while stopping: {line}")
        if s["declared_failed_meanwhile"]:
            hosts = s["declared_failed_meanwhile"]
            print(
                f"  NOTE: while {s['service']} was away, {len(hosts)} hosts were declared "
                f"failed: {', '.join(hosts[:8])}{' ...' if len(hosts) > 8 else ''}"
            )
    for line in r["other_rejections"]:
        print(f"  WARNING: rejected: {line}")


def report(r: dict[str, Any]) -> None:
    report_header(r)
    report_placement(r)
    report_memory(r)
    report_failures(r)
    report_restarts(r)


# -- the command line --------------------------------------------------------------------


def per_host() -> int:
    shape = host_shape("h1")
    return min(
        int(shape.cpu_cores * shape.cpu_mhz // (VM_CPU * MHZ_PER_VCPU)),
        shape.mem_mib // VM_MEM_MIB,
        shape.cpu_cores * VCPU_PER_CORE // VM_CPU,
    )


def check(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, failures: tuple[int, ...]
) -> None:
    if min(ns.hosts, ns.hosts_processes, ns.vms, ns.high_every, ns.window, ns.failure_ticks) < 1:
        parser.error(
            "--hosts, --hosts-processes, --vms, --high-every, --window, --failure-ticks: at least 1"
        )
    if ns.hosts_processes > ns.hosts:
        parser.error("--hosts-processes: at most --hosts")
    if ns.round <= 0 or ns.tick <= 0 or ns.ha_failures < 0 or min(failures, default=0) < 1:
        parser.error("--round and --tick must be positive, --failures at least 1 each")
    # The crashed hosts stay down, and the spare is held back on the others.
    left = ns.hosts - sum(failures) - ns.ha_failures
    if ns.vms > left * per_host():
        parser.error(
            f"{ns.vms} VMs do not fit on {left} hosts ({per_host()} each) once "
            f"{sum(failures)} are crashed and {ns.ha_failures} held spare: use more --hosts"
        )


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1000, help="hosts in all")
    parser.add_argument("--hosts-processes", type=int, default=4, help="hosts processes")
    parser.add_argument("--vms", type=int, default=10_000, help="VMs placed")
    parser.add_argument("--high-every", type=int, default=4, help="every Nth VM is high")
    parser.add_argument("--window", type=int, default=200, help="most unanswered PlaceVm")
    parser.add_argument("--tick", type=float, default=1.0, help="telemetry tick, seconds")
    parser.add_argument("--failure-ticks", type=int, default=5, help="silent ticks to fail")
    parser.add_argument("--round", type=float, default=0.25, help="scheduling round, seconds")
    parser.add_argument("--ha-failures", type=int, default=2, help="VPLANE_HA_FAILURES")
    parser.add_argument("--failures", default="1,2", help="hosts crashed at once, per run")
    parser.add_argument("--seed", type=int, default=7, help="seeds the choice of hosts")
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    try:
        failures = tuple(int(k) for k in ns.failures.split(",") if k.strip())
    except ValueError:
        parser.error("--failures: comma-separated counts, like 1,2")
    check(parser, ns, failures)
    return Options(
        hosts=ns.hosts,
        hosts_processes=ns.hosts_processes,
        vms=ns.vms,
        high_every=ns.high_every,
        window=ns.window,
        tick=ns.tick,
        failure_ticks=ns.failure_ticks,
        round=ns.round,
        ha_failures=ns.ha_failures,
        failures=failures,
        seed=ns.seed,
        as_json=ns.json,
    )


def finite(value: Any) -> Any:
    """``value`` with NaN as null, so that the JSON is JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the services and the server always stop.
    signal.signal(signal.SIGTERM, terminate)
    result = run_embedded(opts)
    report(result)
    if opts.as_json:
        print(json.dumps(finite(result), indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
