"""Wire the tenants service: the tenant clusters' job trackers and their workers."""

from __future__ import annotations

import asyncio
import math
import uuid

import structlog

from schemas import Command, Envelope, Event, Message, Reply
from schemas.host import HostTelemetry
from schemas.queries import QueryFailed
from schemas.scheduling import PlaceVm
from schemas.scratch import AllocateScratch, ReleaseScratch
from schemas.tenants import (
    ClusterList,
    ClusterView,
    JobCompleted,
    ListClusters,
    TaskKind,
    TasksAssigned,
    TasksFinished,
)
from schemas.vm import DestroyVm, PowerOffVm, WorkloadKind
from services.tenants.commands import decide
from services.tenants.state import TaskId, Tenants, evolve
from services.tenants.tracker import advance
from shared.bus import PoisonMessage
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings

NAME = "tenants"
log = structlog.get_logger("vplane.tenants")


class Holder:
    """The fold, and what the job trackers keep in memory: task progress and the
    emulated time each host last reported."""

    def __init__(self) -> None:
        self.tenants = Tenants()
        self.progress: dict[str, dict[TaskId, float]] = {}
        self.last_seen: dict[str, float] = {}
        self.now = 0.0
        self.sent: set[uuid.UUID] = set()
        self.runtime: Runtime | None = None


def command_id(what: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:tenants:{what}")


def build(_settings: Settings) -> ServiceDefinition:
    holder = Holder()

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.tenants = evolve(holder.tenants, env.data)

    async def on_command(env: Envelope[Message]) -> list[Event]:
        return decide(holder.tenants, env, holder.now)

    async def on_telemetry(env: Envelope[Message]) -> list[Event]:
        sample = env.data
        if not isinstance(sample, HostTelemetry):
            raise PoisonMessage(f"the tenants service takes HostTelemetry, not {env.type}")
        holder.now = max(holder.now, env.sim_time)
        last = holder.last_seen.get(sample.host)
        holder.last_seen[sample.host] = env.sim_time
        dt = 0.0 if last is None else max(0.0, env.sim_time - last)
        events = track(holder, sample, dt, env.sim_time)
        assert holder.runtime is not None, "set up before telemetry is taken"
        # Worked out on the fold before the events are: a job completed now still holds
        # its scratch in it.
        spilled = spills(holder.tenants, events)
        await holder.runtime.publish_for_sample(env, events)
        for what, cmd in spilled:
            await holder.runtime.bus.send(Envelope.wrap(cmd, producer=NAME, id=command_id(what)))
        return []

    async def setup(runtime: Runtime) -> None:
        holder.runtime = runtime

    async def answer(env: Envelope[Message]) -> Reply:
        if not isinstance(env.data, ListClusters):
            return QueryFailed(reason=f"the tenants service does not answer {env.type}")
        return ClusterList(clusters=views(holder.tenants))

    async def reconcile_loop(runtime: Runtime) -> None:
        while True:
            async with runtime.exclusive():
                await reconcile(runtime, holder)
            await asyncio.sleep(0.25)

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        fold_filters=("cluster.>", "vm.>", "contention.>"),
        follow=True,
        decide=on_command,
        commands={"tenants-commands": ("cluster.>",)},
        telemetry=on_telemetry,
        queries={"tenants": answer},
        setup=setup,
        loops=[reconcile_loop],
        clock=lambda: holder.now,
    )


def track(holder: Holder, sample: HostTelemetry, dt: float, now: float) -> list[Event]:
    """Every cluster's tracker steps on for the workers this host reported."""
    t = holder.tenants
    rates = {
        s.vm: 1.0 / s.slowdown
        for s in sample.vms
        if s.vm in t.owner and s.state == "on" and t.running.get(s.vm) == sample.host
    }
    events: list[Event] = []
    for cluster in t.clusters:
        progress = holder.progress.setdefault(cluster, {})
        step = advance(t, cluster, progress, rates, dt)
        holder.progress[cluster] = step.progress
        for job in step.jobs:
            done, requeued = step.done.get(job, []), step.requeued.get(job, [])
            if done or requeued:
                events.append(TasksFinished(cluster=cluster, job=job, done=done, requeued=requeued))
            if step.assigned.get(job):
                events.append(TasksAssigned(cluster=cluster, job=job, tasks=step.assigned[job]))
        for finished in step.completed:
            elapsed = max(0.0, now - finished.spec.submitted_sim_time)
            events.append(
                JobCompleted(cluster=cluster, job=finished.spec.job, elapsed_seconds=elapsed)
            )
    return events


def spills(t: Tenants, events: list[Event]) -> list[tuple[str, Command]]:
    """Scratch space for the maps just assigned (on their worker's host), and back for
    the jobs just completed: the commands, with what names each."""
    out: list[tuple[str, Command]] = []
    for e in events:
        match e:
            case TasksAssigned():
                mib = math.ceil(t.jobs[(e.cluster, e.job)].spec.scratch_mib_per_map)
                for a in e.tasks:
                    host = t.running.get(a.vm)
                    if a.kind is TaskKind.MAP and mib and host is not None:
                        what = f"spill:{e.cluster}:{e.job}:{a.task}:{a.vm}"
                        out.append((what, AllocateScratch(host=host, vm=a.vm, tag=e.job, mib=mib)))
            case JobCompleted():
                for host, vm in sorted(t.scratch.get((e.cluster, e.job), frozenset())):
                    if t.running.get(vm) == host:
                        what = f"unspill:{e.cluster}:{e.job}:{vm}"
                        out.append((what, ReleaseScratch(host=host, vm=vm, tag=e.job)))
    return out


async def reconcile(runtime: Runtime, holder: Holder) -> None:
    """Ask for the workers each cluster wants and has not got, and take away those it
    no longer wants; every command has a fixed id, so asking twice changes nothing."""
    t = holder.tenants
    wanted: list[tuple[str, Command]] = []
    for c in t.clusters.values():
        spec = c.spec
        for vm in c.workers:
            if vm not in t.running:
                place = PlaceVm(
                    vm=vm,
                    priority=spec.priority,
                    cpu=spec.worker_cpu,
                    mem_mib=spec.worker_mem_mib,
                    workload=WorkloadKind.HADOOP,
                )
                wanted.append((f"place:{vm}", place))
        for vm in c.removed:
            host = t.running.get(vm)
            if host is not None:
                wanted.append((f"off:{vm}", PowerOffVm(vm=vm, host=host)))
                wanted.append((f"destroy:{vm}", DestroyVm(vm=vm, host=host)))
    for what, cmd in wanted:
        ident = command_id(what)
        if ident in holder.sent:
            continue
        await runtime.bus.send(Envelope.wrap(cmd, producer=runtime.name, id=ident))
        holder.sent.add(ident)


def views(t: Tenants) -> list[ClusterView]:
    out = []
    for name, c in sorted(t.clusters.items()):
        active = t.active(name)
        slots = [c.slots_of(vm) for vm in active]
        tasks = [tid for tid in t.assigned if tid[0] == name]
        jobs = [j for (cl, _), j in t.jobs.items() if cl == name]
        out.append(
            ClusterView(
                cluster=name,
                priority=c.spec.priority,
                workers=len(c.workers),
                running=len(active),
                min_workers=c.spec.min_workers,
                max_workers=c.spec.max_workers,
                map_slots=sum(s.map_slots for s in slots),
                reduce_slots=sum(s.reduce_slots for s in slots),
                running_tasks=len(tasks),
                jobs_running=sorted(j.spec.job for j in jobs if not j.completed),
                jobs_done=sum(1 for j in jobs if j.completed),
                contended_hosts=sorted({t.running[vm] for vm in active} & t.contended),
            )
        )
    return out
