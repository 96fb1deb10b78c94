"""Contention monitor on and off: one seeded noisy-neighbour scenario, run twice.

Each run gets a fresh embedded nats-server (temporary data dir, free loopback port) and
fresh services as processes (``shared.cli.supervisor.Supervisor``): hosts, both
schedulers, tenants and, in the ON run only, the contention monitor. The driver, a
``NatsBus`` in this process, builds the same scenario in both runs:

* two hosts of 16 cores; tenant clusters ``gold`` (high priority, protected: its minimum
  is its size) and ``batch`` (low priority, minimum 1), placed by the schedulers;
* a noisy neighbour VM (``WorkloadKind.NOISY``) placed powered off on h1 by the low
  scheduler, after the workers: as many of its 16 vCPUs as h1 has room for in the
  ledger (a host runs only what a reservation covers; with the workers spread evenly,
  h1 has 14 vCPUs' worth left);
* both tenants submit one MapReduce job at the same emulated time; the noisy VM is
  powered on a fixed emulated time later and powered off later still.

It watches the event log and the telemetry stream, and prints how fast the monitor
detected the contention and acted, and each tenant's job time with the monitor on and off.

The default timing puts the noisy VM on for ticks 30 to 59 (emulated seconds, one tick
each): one 30 s demand epoch of the tenants' workers (``HadoopWorker`` profiles, all of
seed 0, change level at ticks 30, 60, 90). bench/README.md says why, and what a noisy
period across an epoch change gives.

    .venv/bin/python bench/contention_experiment.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import run_until_sigterm, signals_held, terminate, to_the_end

from schemas import Command, Envelope
from schemas.contention import ContentionCleared, ContentionDetected, ScalingDecided
from schemas.host import HostTelemetry
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.service import CommandRejected, ServiceStarted
from schemas.tenants import (
    ClusterScaled,
    CreateCluster,
    JobCompleted,
    JobSubmitted,
    SlotsAllocated,
    SubmitJob,
    TasksFinished,
)
from schemas.vm import (
    PowerOffVm,
    PowerOnVm,
    VmCreated,
    VmDestroyed,
    VmPoweredOff,
    VmPoweredOn,
    WorkloadKind,
)
from services.contention.detector import Thresholds
from services.hosts.bootstrap import host_shape
from shared.broker import EmbeddedNats
from shared.bus import Logged, Stream, Subscription
from shared.bus.nats import NatsBus
from shared.cli.supervisor import SERVICES, Supervisor
from shared.logs import configure as configure_logs
from shared.testing import unique_namespace

HOSTS = 2
NOISY = "noisy"
NOISY_HOST = "h1"
NOISY_MEM_MIB = 4096
GOLD, BATCH = "gold", "batch"
JOB = "job1"
POLL = 0.25
START_SECONDS = 60.0
CLOSE_SECONDS = 30.0
# The run fails when no telemetry arrives for this long (a stuck or dead hosts service).
STALL_SECONDS = 15.0
# After ContentionCleared, how long (emulated) the ON run waits for the scale-up.
SETTLE_EMULATED_S = 20.0


@dataclass
class Options:
    tick: float
    speed: float
    round: float
    gold_workers: int
    batch_workers: int
    worker_cpu: int
    batch_cpu: int
    maps: int
    reduces: int
    map_cpu_s: float
    reduce_cpu_s: float
    submit_at: float
    noisy_on: float
    noisy_off: float
    noisy_cpu: int
    seed: int
    timeout: float
    log_dir: Path | None
    only: str | None
    as_json: bool

    @property
    def step(self) -> float:
        """Emulated seconds per telemetry tick."""
        return self.tick * self.speed


@dataclass
class Sample:
    """What one telemetry tick of the noisy host said."""

    tick: int
    sim_time: float
    worst_slowdown: float
    mean_ready_ms: float
    demand_ratio: float
    noisy_on: bool
    # Running tenant workers on the host: VM -> slowdown.
    workers: dict[str, float]


@dataclass
class Mark:
    """An event of interest, with its emulated time (and telemetry tick when known)."""

    sim_time: float
    tick: int | None
    what: dict[str, Any]


@dataclass
class Record:
    """Everything one run saw, as it arrived."""

    step: float
    started: set[str] = field(default_factory=set)
    placed: dict[str, str] = field(default_factory=dict)
    # Where the VMs were when the jobs were submitted.
    placed_at_start: dict[str, str] = field(default_factory=dict)
    destroyed: set[str] = field(default_factory=set)
    ticks: dict[str, int] = field(default_factory=dict)
    last_telemetry: float = field(default_factory=time.monotonic)
    # Telemetry envelope id -> (tick, sim_time): what a monitor event answered.
    telemetry: dict[uuid.UUID, tuple[int, float]] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    noisy: dict[str, float] = field(default_factory=dict)
    # The noisy VM's vCPUs as created: what its scheduler found room for.
    noisy_cpu: int | None = None
    submitted: dict[str, float] = field(default_factory=dict)
    completed: dict[str, Mark] = field(default_factory=dict)
    detected: list[Mark] = field(default_factory=list)
    cleared: list[Mark] = field(default_factory=list)
    decided: list[Mark] = field(default_factory=list)
    scaled: list[Mark] = field(default_factory=list)
    slot_changes: list[Mark] = field(default_factory=list)
    requeued: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    handler_errors: list[str] = field(default_factory=list)


class Driver:
    """The driver's bus: sends the scenario's commands and records what comes back."""

    def __init__(self, url: str, namespace: str, sup: Supervisor, opts: Options) -> None:
        self.bus = NatsBus(url, namespace=namespace, client_name="contention-experiment")
        self.sup = sup
        self.opts = opts
        self.rec = Record(step=opts.step)
        self.bar = Thresholds()
        self.recancels = 0
        self._changed = asyncio.Event()
        self._watchers: list[Subscription] = []

    async def start(self) -> None:
        await self.bus.start()
        self._watchers.append(await self.bus.watch(Stream.EVENTS, (), self._guarded(self._event)))
        self._watchers.append(
            await self.bus.watch(Stream.TELEMETRY, ("host.>",), self._guarded(self._sample))
        )

    def _guarded(
        self, handler: Callable[[Logged], None]
    ) -> Callable[[Logged], Coroutine[Any, Any, None]]:
        """A watcher logs and forgets a failing handler: here the failure is kept."""

        async def run(entry: Logged) -> None:
            try:
                handler(entry)
            except Exception as err:
                self.rec.handler_errors.append(f"{entry.subject}: {err!r}")
                raise
            finally:
                self._changed.set()

        return run

    def _event(self, entry: Logged) -> None:  # noqa: PLR0912 - one branch per event type
        env = entry.envelope
        if env is None:
            return
        rec, data = self.rec, env.data
        match data:
            case ServiceStarted():
                rec.started.add(data.service)
            case VmCreated():
                rec.placed[data.vm] = data.host
                if data.vm == NOISY:
                    rec.noisy_cpu = data.cpu
            case VmDestroyed():
                rec.destroyed.add(data.vm)
            case VmPoweredOn() if data.vm == NOISY:
                rec.noisy.setdefault("powered_on", env.sim_time)
            case VmPoweredOff() if data.vm == NOISY:
                rec.noisy.setdefault("powered_off", env.sim_time)
            case JobSubmitted():
                rec.submitted[data.cluster] = data.submitted_sim_time
            case JobCompleted():
                rec.completed[data.cluster] = Mark(
                    env.sim_time, None, {"elapsed_seconds": data.elapsed_seconds}
                )
            case ContentionDetected() | ContentionCleared():
                mark = Mark(
                    data.tick * rec.step,
                    data.tick,
                    {
                        "host": data.host,
                        "episode": data.episode,
                        **data.evidence.model_dump(),
                        "envelope_sim_time": env.sim_time,
                    },
                )
                (rec.detected if isinstance(data, ContentionDetected) else rec.cleared).append(mark)
            case ScalingDecided():
                # Timed by the telemetry sample it answers: the tick, not only the clock.
                tick, at = rec.telemetry.get(env.causation_id or uuid.UUID(int=0), (-1, -1.0))
                rec.decided.append(
                    Mark(
                        at,
                        tick if tick >= 0 else None,
                        {
                            "host": data.host,
                            "cluster": data.cluster,
                            "direction": data.direction.value,
                            "delta": data.delta,
                            "reason": data.reason,
                            "envelope_sim_time": env.sim_time,
                        },
                    )
                )
            case ClusterScaled():
                rec.scaled.append(
                    Mark(
                        env.sim_time,
                        None,
                        {
                            "cluster": data.cluster,
                            "from": data.from_workers,
                            "to": data.to_workers,
                            "added": data.added,
                            "removed": data.removed,
                            "reason": data.reason,
                        },
                    )
                )
            case SlotsAllocated():
                slots = {s.vm: f"{s.map_slots}/{s.reduce_slots}" for s in data.slots}
                rec.slot_changes.append(
                    Mark(env.sim_time, None, {"cluster": data.cluster, "slots": slots})
                )
            case TasksFinished() if data.requeued:
                rec.requeued[data.cluster] = rec.requeued.get(data.cluster, 0) + len(data.requeued)
            case CommandRejected():
                rec.rejected.append(f"{data.command_type} {data.about}: {data.reason}")

    def _sample(self, entry: Logged) -> None:
        env = entry.envelope
        if env is None or not isinstance(env.data, HostTelemetry):
            return
        rec, data = self.rec, env.data
        rec.last_telemetry = time.monotonic()
        rec.ticks[data.host] = max(rec.ticks.get(data.host, -1), data.tick)
        rec.telemetry[env.id] = (data.tick, env.sim_time)
        if data.host != NOISY_HOST:
            return
        # As the detector measures it (services/contention/detector.py: measure).
        running = [v for v in data.vms if v.state == "on"]
        ready = sum(v.cpu_ready_ms for v in running) / len(running) if running else 0.0
        rec.samples.append(
            Sample(
                tick=data.tick,
                sim_time=env.sim_time,
                worst_slowdown=max((v.slowdown for v in running), default=1.0),
                mean_ready_ms=ready,
                demand_ratio=data.cpu_demand_mhz / max(1, data.cpu_capacity_mhz),
                noisy_on=any(v.vm == NOISY for v in running),
                workers={v.vm: v.slowdown for v in running if v.vm != NOISY},
            )
        )

    def alive(self) -> None:
        for child in self.sup.crashed():
            lines = child.log_path.read_text(errors="replace").splitlines()[-15:]
            tail = "\n".join(lines)
            raise RuntimeError(f"{child.name} exited with {child.exit_code}; its log ends:\n{tail}")
        if self.rec.handler_errors:
            raise RuntimeError(f"a watch handler failed: {self.rec.handler_errors[0]}")

    async def until(self, done: Callable[[], bool], what: str, deadline: float) -> None:
        """Wait for ``done``; fails on a crashed service, stalled telemetry or the deadline."""
        while not done():
            self.alive()
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            if self.rec.ticks and now - self.rec.last_telemetry > STALL_SECONDS:
                raise RuntimeError(f"no telemetry for {STALL_SECONDS:.0f}s, waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), POLL)

    async def at_tick(self, sim_time: float, what: str, deadline: float) -> None:
        """Until every host has reported the tick of ``sim_time`` (emulated seconds), and a
        quarter tick more, so the services that take telemetry have folded it too."""
        tick = round(sim_time / self.opts.step)
        await self.until(
            lambda: len(self.rec.ticks) == HOSTS and min(self.rec.ticks.values()) >= tick,
            what,
            deadline,
        )
        await asyncio.sleep(self.opts.tick / 4)

    async def send(self, command: Command) -> None:
        await self.bus.send(Envelope.wrap(command, producer="bench"))

    async def close(self) -> None:
        """Close the bus; a watcher whose cancel was lost (see scheduler_bus_bench.py) is
        cancelled again until the close is done, for at most CLOSE_SECONDS."""
        closing = asyncio.ensure_future(self.bus.close())
        deadline = time.monotonic() + CLOSE_SECONDS
        while not closing.done():
            await asyncio.wait({closing}, timeout=1.0)
            for watcher in self._watchers:
                task = getattr(watcher, "_task", None)
                if not closing.done() and isinstance(task, asyncio.Task) and not task.done():
                    task.cancel()
                    self.recancels += 1
            if time.monotonic() > deadline:
                closing.cancel()
                raise RuntimeError(f"the driver's bus did not close in {CLOSE_SECONDS:.0f}s")
        closing.result()


def workers_of(rec: Record, cluster: str) -> list[str]:
    return sorted(vm for vm in rec.placed if vm.startswith(f"{cluster}-w"))


def started(rec: Record, names: Sequence[str]) -> Callable[[], bool]:
    return lambda: set(names) <= rec.started


def created(rec: Record, cluster: str, size: int) -> Callable[[], bool]:
    return lambda: len(workers_of(rec, cluster)) >= size


async def scenario(drv: Driver, monitor: bool) -> dict[str, float]:
    """Start the services, build the scenario and play it; the wall times of its phases."""
    opts, rec = drv.opts, drv.rec
    begin = time.monotonic()
    wall: dict[str, float] = {}
    # Hosts first: the schedulers rebuild their ledgers from the hosts registered by then.
    rest = ["scheduler-high", "scheduler-low", "tenants"] + ["contention-monitor"] * monitor
    for group in (["hosts"], rest):
        drv.sup.start(tuple(s for s in SERVICES if s[0] in group))
        await drv.until(
            started(rec, group),
            f"ServiceStarted of {', '.join(group)}",
            time.monotonic() + START_SECONDS,
        )
    wall["services_ready"] = time.monotonic() - begin
    deadline = begin + opts.timeout

    # The protected tenant first, then the other: each placed by its own scheduler.
    for cluster, size, priority, minimum, cpu in (
        (GOLD, opts.gold_workers, Owner.HIGH, opts.gold_workers, opts.worker_cpu),
        (BATCH, opts.batch_workers, Owner.LOW, 1, opts.batch_cpu),
    ):
        await drv.send(
            CreateCluster(
                cluster=cluster,
                workers=size,
                min_workers=minimum,
                max_workers=size,
                priority=priority,
                worker_cpu=cpu,
            )
        )
        await drv.until(created(rec, cluster, size), f"{size} workers of {cluster}", deadline)
    # Through the low scheduler, which reserves its room on h1 first: a host runs only
    # what the ledger holds room for. After the workers, so that they spread as before;
    # the noisy VM then takes what h1 has left, up to --noisy-cpu (a degraded placement).
    await drv.send(
        PlaceVm(
            vm=NOISY,
            priority=Owner.LOW,
            cpu=opts.noisy_cpu,
            min_cpu=1,
            mem_mib=NOISY_MEM_MIB,
            rules=PlacementRules(host_affinity=Affinity(must=[NOISY_HOST])),
            power_on=False,
            workload=WorkloadKind.NOISY,
            seed=opts.seed,
        )
    )
    await drv.until(
        lambda: NOISY in rec.placed or any(f" vm/{NOISY}:" in r for r in rec.rejected),
        "the noisy VM created",
        deadline,
    )
    if NOISY not in rec.placed:
        raise RuntimeError(f"the noisy VM was not placed: {rec.rejected}")
    wall["scenario_built"] = time.monotonic() - begin
    ready_tick = min(rec.ticks.values(), default=0)
    if ready_tick * opts.step >= opts.submit_at:
        raise RuntimeError(
            f"the set-up took until emulated {ready_tick * opts.step:g} s, past --submit-at "
            f"{opts.submit_at:g}: raise --submit-at"
        )

    await drv.at_tick(opts.submit_at, "the submission tick", deadline)
    for cluster in (GOLD, BATCH):
        await drv.send(
            SubmitJob(
                cluster=cluster,
                job=JOB,
                maps=opts.maps,
                reduces=opts.reduces,
                map_cpu_seconds=opts.map_cpu_s,
                reduce_cpu_seconds=opts.reduce_cpu_s,
            )
        )
    wall["submitted"] = time.monotonic() - begin
    rec.placed_at_start = dict(rec.placed)
    # The noisy VM's power changes land between two ticks: it runs from the tick after.
    step = opts.step
    await drv.at_tick(opts.submit_at + opts.noisy_on - step, "the noisy power-on tick", deadline)
    await drv.send(PowerOnVm(vm=NOISY, host=NOISY_HOST))
    await drv.at_tick(opts.submit_at + opts.noisy_off - step, "the noisy power-off tick", deadline)
    await drv.send(PowerOffVm(vm=NOISY, host=NOISY_HOST))
    await drv.until(lambda: len(rec.completed) == 2, "both jobs completed", deadline)
    wall["jobs_done"] = time.monotonic() - begin
    if monitor:
        # The scale-up that follows the clearing, or SETTLE_EMULATED_S without one.
        await drv.until(lambda: bool(rec.cleared), "ContentionCleared", deadline)
        settle = rec.cleared[0].sim_time + SETTLE_EMULATED_S

        def grown() -> bool:
            return any(m.what["added"] and m.what["reason"] != "created" for m in rec.scaled)

        await drv.until(
            lambda: grown() or min(rec.ticks.values()) * step >= settle,
            "the scale-up after the clearing",
            deadline,
        )
        await asyncio.sleep(opts.tick)
    wall["end"] = time.monotonic() - begin
    return wall


def onset_of(rec: Record, bar: Thresholds) -> Sample | None:
    """The first tick of the noisy host over the detector's bar, as the detector measures."""
    return next(
        (
            s
            for s in rec.samples
            if s.worst_slowdown >= bar.slowdown_on or s.mean_ready_ms >= bar.ready_on_ms
        ),
        None,
    )


def noisy_ticks(rec: Record) -> list[Sample]:
    return [s for s in rec.samples if s.noisy_on]


def worker_slowdowns(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Per cluster, its workers' mean and worst slowdown on the noisy host over ``samples``."""
    out: dict[str, dict[str, float]] = {}
    for cluster in (GOLD, BATCH):
        values = [
            v for s in samples for vm, v in s.workers.items() if vm.startswith(f"{cluster}-w")
        ]
        if values:
            out[cluster] = {
                "mean": sum(values) / len(values),
                "max": max(values),
                "samples": len(values),
            }
    return out


def planned(opts: Options) -> dict[str, float]:
    """The scenario's plan in emulated time and ticks, identical in both runs."""
    return {
        "submitted_sim_time": opts.submit_at,
        "noisy_first_tick": round((opts.submit_at + opts.noisy_on) / opts.step),
        "noisy_last_tick": round((opts.submit_at + opts.noisy_off) / opts.step) - 1,
    }


def deviations(r: dict[str, Any]) -> list[str]:
    """Where a run did not follow the plan (a command that landed a tick late): its
    figures are then not comparable with the other run's."""
    plan, noisy, out = r["planned"], r["noisy"], []
    for cluster, at in sorted(r["submitted_sim_time"].items()):
        if at != plan["submitted_sim_time"]:
            out.append(f"{cluster}'s job submitted at {at:g} s, not {plan['submitted_sim_time']:g}")
    for key in ("first", "last"):
        if noisy[f"{key}_tick_on"] != plan[f"noisy_{key}_tick"]:
            out.append(
                f"the noisy VM's {key} tick on was {noisy[f'{key}_tick_on']}, "
                f"not {plan[f'noisy_{key}_tick']}"
            )
    return out


def figures(drv: Driver, monitor: bool, wall: dict[str, float]) -> dict[str, Any]:
    rec, bar, step = drv.rec, drv.bar, drv.opts.step
    onset = onset_of(rec, bar)
    noisy = noisy_ticks(rec)
    detected = next((m for m in rec.detected if m.what["host"] == NOISY_HOST), None)
    first_decided = min(rec.decided, key=lambda m: m.sim_time, default=None)
    contention_scaled = [m for m in rec.scaled if m.what["reason"] != "created"]
    first_scaled = min(contention_scaled, key=lambda m: m.sim_time, default=None)
    result: dict[str, Any] = {
        "monitor": monitor,
        "wall_s": wall,
        "placement": dict(sorted(rec.placed_at_start.items())),
        # Workers placed later (the scale-up) and those destroyed (the scale-down).
        "placed_later": {
            vm: h for vm, h in sorted(rec.placed.items()) if vm not in rec.placed_at_start
        },
        "destroyed": sorted(rec.destroyed),
        "submitted_sim_time": rec.submitted,
        "noisy": {
            "cpu": rec.noisy_cpu,
            "powered_on": rec.noisy.get("powered_on"),
            "powered_off": rec.noisy.get("powered_off"),
            "first_tick_on": noisy[0].tick if noisy else None,
            "last_tick_on": noisy[-1].tick if noisy else None,
        },
        "planned": planned(drv.opts),
        "onset": asdict(onset) if onset else None,
        "jobs": {
            c: {"elapsed_seconds": m.what["elapsed_seconds"], "completed_sim_time": m.sim_time}
            for c, m in sorted(rec.completed.items())
        },
        "worker_slowdown_while_noisy": worker_slowdowns(noisy),
        "detected": [asdict(m) for m in rec.detected],
        "cleared": [asdict(m) for m in rec.cleared],
        "scaling_decided": [asdict(m) for m in rec.decided],
        "cluster_scaled": [asdict(m) for m in contention_scaled],
        "slot_changes": [asdict(m) for m in rec.slot_changes],
        "slot_changes_per_cluster": {
            c: sum(len(m.what["slots"]) for m in rec.slot_changes if m.what["cluster"] == c)
            for c in (GOLD, BATCH)
        },
        # The noisy host, tick by tick: worst running VM's slowdown, and each worker's.
        "h1_ticks": [
            {
                "tick": s.tick,
                "worst": s.worst_slowdown,
                "ready_ms": round(s.mean_ready_ms, 1),
                "noisy": s.noisy_on,
                "workers": s.workers,
            }
            for s in rec.samples
            if s.sim_time >= min(rec.submitted.values(), default=0.0)
        ],
        "tasks_requeued": rec.requeued,
        "rejected": rec.rejected,
        "watcher_recancels": drv.recancels,
    }
    if onset is not None and detected is not None and detected.tick is not None:
        periods = detected.tick - onset.tick
        result["detection"] = {"periods": periods, "emulated_s": periods * step}
    if onset is not None and first_decided is not None and first_decided.tick is not None:
        result["to_scaling_decided_s"] = first_decided.sim_time - onset.sim_time
    if onset is not None and first_scaled is not None:
        result["to_cluster_scaled_s"] = first_scaled.sim_time - onset.sim_time
    result["deviations"] = deviations(result)
    return result


async def one_run(url: str, namespace: str, sup: Supervisor, opts: Options, monitor: bool) -> Any:
    drv = Driver(url, namespace, sup, opts)
    try:
        await drv.start()
        wall = await scenario(drv, monitor)
    finally:
        await to_the_end(drv.close)
    return figures(drv, monitor, wall)


def run_embedded(opts: Options, monitor: bool) -> dict[str, Any]:
    """A fresh server and fresh services for one run; both always stop."""
    label = "on" if monitor else "off"
    with tempfile.TemporaryDirectory(prefix="vplane-contention-") as tmp:
        broker = EmbeddedNats(Path(tmp) / "nats")
        namespace = unique_namespace(f"cx{label}")
        env = {
            "VPLANE_BUS_URL": broker.url,
            "VPLANE_NAMESPACE": namespace,
            "VPLANE_HOSTS": str(HOSTS),
            "VPLANE_HOST_PREFIX": "h",
            "VPLANE_TICK_SECONDS": repr(opts.tick),
            "VPLANE_SPEED": repr(opts.speed),
            "VPLANE_ROUND_SECONDS": repr(opts.round),
            "VPLANE_HA_FAILURES": "0",
            "VPLANE_REBALANCE_THRESHOLD": "1",
            "VPLANE_LOG_FORMAT": "json",
        }
        logs = (opts.log_dir / label) if opts.log_dir else Path(tmp) / "logs"
        sup = Supervisor(env, logs)
        try:
            broker.start()
            start = time.monotonic()
            result = run_until_sigterm(one_run(broker.url, namespace, sup, opts, monitor))
            return result | {"url": broker.url, "run_wall_s": time.monotonic() - start}
        finally:
            with signals_held():
                sup.stop()
                broker.stop()


def compare(on: dict[str, Any], off: dict[str, Any], step: float) -> dict[str, Any]:
    """Per tenant: job time on and off, their ratio; whether gold finished sooner."""
    out: dict[str, Any] = {}
    for cluster in (GOLD, BATCH):
        a = on["jobs"].get(cluster, {}).get("elapsed_seconds")
        b = off["jobs"].get(cluster, {}).get("elapsed_seconds")
        out[cluster] = {
            "on_s": a,
            "off_s": b,
            "ratio_on_off": a / b if a is not None and b else None,
        }
    out["comparable"] = not on["deviations"] and not off["deviations"]
    gold = out[GOLD]
    # Elapsed times move in whole ticks: sooner means by more than one tick.
    gold["sooner_with_monitor"] = (
        gold["on_s"] is not None
        and gold["off_s"] is not None
        and gold["off_s"] - gold["on_s"] > step
    )
    return out


def fmt(value: float | None, unit: str = " s", spec: str = ".1f") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_monitor(r: dict[str, Any]) -> None:
    """What the monitor detected and did in the ON run."""
    det = r.get("detection")
    if det is None:
        print("  ContentionDetected : none for h1")
    else:
        d = r["detected"][0]
        print(
            f"  ContentionDetected : tick {d['tick']} ({d['sim_time']:g} s), "
            f"{det['periods']} period(s) = {det['emulated_s']:g} s after the onset "
            f"(target <= 2 periods)"
        )
    print(
        f"  first scaling      : ScalingDecided {fmt(r.get('to_scaling_decided_s'), ' s', 'g')}"
        f", ClusterScaled {fmt(r.get('to_cluster_scaled_s'), ' s', 'g')} after the onset "
        f"(target <= 5 s)"
    )
    for m in r["scaling_decided"]:
        w = m["what"]
        print(
            f"    ScalingDecided at {m['sim_time']:g} s (tick {m['tick']}): {w['cluster']} "
            f"{w['direction']} {w['delta']:+d} (contention on {w['host']})"
        )
    for m in r["cluster_scaled"]:
        w = m["what"]
        hosts = {**r["placement"], **r["placed_later"]}
        moved = [f"{vm} ({hosts.get(vm, '?')})" for vm in w["removed"] or w["added"]]
        print(
            f"    ClusterScaled  at {m['sim_time']:g} s: {w['cluster']} {w['from']} -> "
            f"{w['to']} ({'removed' if w['removed'] else 'added'} {', '.join(moved)})"
        )
    for c in r["cleared"]:
        print(f"  ContentionCleared  : tick {c['tick']} ({c['sim_time']:g} s)")
    if not r["cleared"]:
        print("  ContentionCleared  : none")
    per = r["slot_changes_per_cluster"]
    slots = ", ".join(f"{k} {v}" for k, v in sorted(per.items()))
    print(f"  slot changes       : {slots} (AllocateSlots applied, worker by worker)")


def print_run(r: dict[str, Any]) -> None:
    label = "ON" if r["monitor"] else "OFF"
    print(f"-- run {label}: {r['url']}, {r['run_wall_s']:.1f} s wall")
    where: dict[str, list[str]] = {}
    for vm, host in r["placement"].items():
        where.setdefault(host, []).append(vm)
    cells = "; ".join(f"{h}: {', '.join(vms)}" for h, vms in sorted(where.items()))
    print(f"  placed             : {cells}")
    sub = r["submitted_sim_time"]
    noisy = r["noisy"]
    print(
        f"  jobs submitted at  : {', '.join(f'{c} {t:g} s' for c, t in sorted(sub.items()))}; "
        f"noisy ({noisy['cpu']} vCPU) powered on at {fmt(noisy['powered_on'], ' s', 'g')} "
        f"(first tick on: {noisy['first_tick_on']}), off at {fmt(noisy['powered_off'], ' s', 'g')} "
        f"(last tick on: {noisy['last_tick_on']})"
    )
    onset = r["onset"]
    if onset is None:
        print("  onset              : h1 never crossed the detector's bar")
    else:
        print(
            f"  onset              : tick {onset['tick']} ({onset['sim_time']:g} s): worst "
            f"slowdown {onset['worst_slowdown']:.2f}, mean cpu.ready "
            f"{onset['mean_ready_ms']:.0f} ms, demand {onset['demand_ratio']:.0%} of capacity"
        )
    for cluster, s in r["worker_slowdown_while_noisy"].items():
        print(
            f"  {cluster} on h1, noisy on: slowdown mean {s['mean']:.2f}, max {s['max']:.2f} "
            f"({s['samples']} worker-ticks)"
        )
    if r["monitor"]:
        print_monitor(r)
    elif r["detected"] or r["scaling_decided"] or r["cluster_scaled"]:
        print("  WARNING: contention events without the monitor")
    requeued = ", ".join(f"{k} {v}" for k, v in sorted(r["tasks_requeued"].items())) or "none"
    print(f"  tasks requeued     : {requeued}")
    jobs = ", ".join(
        f"{c} {j['elapsed_seconds']:g} s (done at {j['completed_sim_time']:g} s)"
        for c, j in r["jobs"].items()
    )
    print(f"  job times          : {jobs}")
    for deviation in r["deviations"]:
        print(f"  WARNING: not as planned: {deviation}")
    if r["rejected"]:
        print(
            f"  WARNING: {len(r['rejected'])} command(s) rejected: {'; '.join(r['rejected'][:5])}"
        )
    if r["watcher_recancels"]:
        print(f"  NOTE: a watcher lost its cancel; cancelled {r['watcher_recancels']} more times")


def report(result: dict[str, Any], opts: Options) -> None:
    shape = host_shape("h1")
    print(
        f"== contention monitor on and off: {HOSTS} hosts of {shape.cpu_cores} cores; "
        f"{GOLD} (high, {opts.gold_workers} workers of {opts.worker_cpu} vCPU) and {BATCH} "
        f"(low, {opts.batch_workers} workers of {opts.batch_cpu} vCPU, minimum 1)"
    )
    print(
        f"jobs: {opts.maps} maps x {opts.map_cpu_s:g} CPU-s + {opts.reduces} reduces x "
        f"{opts.reduce_cpu_s:g} CPU-s each, submitted at {opts.submit_at:g} s; noisy "
        f"(up to {opts.noisy_cpu} vCPU, as {NOISY_HOST} has room) on {NOISY_HOST} from "
        f"+{opts.noisy_on:g} s to +{opts.noisy_off:g} s; seed {opts.seed}"
    )
    print(
        f"a tick every {opts.tick:g} s wall = {opts.step:g} s emulated (speed {opts.speed:g}); "
        f"rounds {opts.round:g} s; detector bar: slowdown >= {Thresholds().slowdown_on} or "
        f"cpu.ready >= {Thresholds().ready_on_ms:g} ms for {Thresholds().ticks_on} ticks"
    )
    print()
    for key in ("on", "off"):
        if key in result:
            print_run(result[key])
            print()
    if "compare" not in result:
        return
    cmp = result["compare"]
    print("== job completion time (emulated s, from submission)")
    print(f"  {'tenant':<8}{'monitor on':>12}{'monitor off':>13}{'on / off':>10}")
    for cluster in (GOLD, BATCH):
        c = cmp[cluster]
        print(
            f"  {cluster:<8}{fmt(c['on_s']):>12}{fmt(c['off_s']):>13}"
            f"{fmt(c['ratio_on_off'], '', '.3f'):>10}"
        )
    gold = cmp[GOLD]
    if gold["on_s"] is not None and gold["off_s"] is not None:
        diff = gold["off_s"] - gold["on_s"]
        verdict = "yes" if gold["sooner_with_monitor"] else "NO"
        print(
            f"  {GOLD} finished sooner with the monitor on: {verdict} "
            f"({diff:+g} s, {diff / gold['off_s']:+.1%} of the OFF time)"
        )
    if not cmp["comparable"]:
        print("  WARNING: a run did not follow the plan (see above): the runs are not comparable")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tick", type=float, default=0.25, help="wall seconds per tick")
    parser.add_argument("--speed", type=float, default=4.0, help="emulated s per wall s")
    parser.add_argument("--round", type=float, default=0.2, help="scheduling round, seconds")
    parser.add_argument("--gold-workers", type=int, default=4)
    parser.add_argument("--batch-workers", type=int, default=8)
    parser.add_argument("--worker-cpu", type=int, default=4, help="vCPUs of a worker")
    parser.add_argument("--batch-cpu", type=int, help="vCPUs of a batch worker (--worker-cpu)")
    parser.add_argument("--maps", type=int, default=48, help="map tasks of each job")
    parser.add_argument("--reduces", type=int, default=4, help="reduce tasks of each job")
    parser.add_argument("--map-cpu-s", type=float, default=15.0, help="CPU-seconds per map")
    parser.add_argument("--reduce-cpu-s", type=float, default=10.0, help="CPU-s per reduce")
    parser.add_argument(
        "--submit-at", type=float, default=26.0, help="emulated time the jobs are submitted"
    )
    parser.add_argument("--noisy-on", type=float, default=3.0, help="after submission, emulated s")
    parser.add_argument("--noisy-off", type=float, default=48.0, help="after submission")
    parser.add_argument("--noisy-cpu", type=int, default=16, help="vCPUs of the noisy VM")
    parser.add_argument("--seed", type=int, default=7, help="seeds the noisy VM's workload")
    parser.add_argument("--timeout", type=float, default=120.0, help="wall seconds per run")
    parser.add_argument("--log-dir", type=Path, help="keep the services' logs here")
    parser.add_argument("--only", choices=("on", "off"), help="one run, no comparison")
    parser.add_argument("--json", action="store_true", help="print a JSON object at the end")
    ns = parser.parse_args(argv)
    if min(ns.gold_workers, ns.batch_workers, ns.worker_cpu, ns.maps, ns.noisy_cpu) < 1 or (
        ns.batch_cpu is not None and ns.batch_cpu < 1
    ):
        parser.error("workers, --worker-cpu, --batch-cpu, --maps, --noisy-cpu: at least 1")
    if min(ns.tick, ns.speed, ns.round, ns.timeout) <= 0:
        parser.error("--tick, --speed, --round and --timeout must be positive")
    step = ns.tick * ns.speed
    if not step <= ns.noisy_on < ns.noisy_off:
        parser.error(f"need one tick ({step:g} s) <= --noisy-on < --noisy-off")
    return Options(
        tick=ns.tick,
        speed=ns.speed,
        round=ns.round,
        gold_workers=ns.gold_workers,
        batch_workers=ns.batch_workers,
        worker_cpu=ns.worker_cpu,
        batch_cpu=ns.batch_cpu or ns.worker_cpu,
        maps=ns.maps,
        reduces=ns.reduces,
        map_cpu_s=ns.map_cpu_s,
        reduce_cpu_s=ns.reduce_cpu_s,
        submit_at=ns.submit_at,
        noisy_on=ns.noisy_on,
        noisy_off=ns.noisy_off,
        noisy_cpu=ns.noisy_cpu,
        seed=ns.seed,
        timeout=ns.timeout,
        log_dir=ns.log_dir,
        only=ns.only,
        as_json=ns.json,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the services and the server always stop.
    signal.signal(signal.SIGTERM, terminate)
    options = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    result: dict[str, Any] = {"options": options | {"step_s": opts.step}}
    for key in ("on", "off"):
        if opts.only in (None, key):
            result[key] = run_embedded(opts, monitor=key == "on")
    if opts.only is None:
        result["compare"] = compare(result["on"], result["off"], opts.step)
    report(result, opts)
    if opts.as_json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
