"""Wire the tenants service: the tenant clusters' job trackers and their workers."""

from __future__ import annotations

import math
from typing import Any

import structlog

from schemas import Command, Envelope, Event, Message, Reply
from schemas.host import HostTelemetry
from schemas.queries import QueryFailed
from schemas.scheduling import PlaceVm
from schemas.scratch import AllocateScratch, ReleaseScratch
from schemas.tenants import (
    ClusterList,
    ClusterScaled,
    ClusterView,
    JobCompleted,
    ListClusters,
    TaskKind,
    TasksAssigned,
    TasksFinished,
)
from schemas.vm import DestroyVm, PowerOffVm, WorkloadKind
from services.tenants.commands import decide
from services.tenants.state import TaskId, Tenants, evolve, worker_name
from services.tenants.tracker import advance
from shared.clock import StackClock
from shared.loops import Loop
from shared.outcome import Outcome, answer
from shared.runtime import ServiceDefinition
from shared.samples import host_sample
from shared.settings import Settings

NAME = "tenants"
RECONCILE_SECONDS = 0.25
log = structlog.get_logger("vplane.tenants")


class Holder:
    """The fold, and what the job trackers keep of the telemetry they have seen: task
    progress and the emulated time each host last reported (carried over a restart in
    ServiceStopped: shared/carried.py)."""

    def __init__(self) -> None:
        self.tenants = Tenants()
        self.progress: dict[str, dict[TaskId, float]] = {}
        self.last_seen: dict[str, float] = {}
        self.clock = StackClock()

    def save(self) -> dict[str, Any]:
        return {
            "progress": {
                cluster: [
                    [job, kind.value, index, done] for (_, job, kind, index), done in p.items()
                ]
                for cluster, p in self.progress.items()
            },
            "last_seen": dict(self.last_seen),
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.progress = {
            cluster: {
                (cluster, job, TaskKind(kind), int(index)): float(done)
                for job, kind, index, done in tasks
            }
            for cluster, tasks in saved.get("progress", {}).items()
        }
        self.last_seen = {h: float(t) for h, t in saved.get("last_seen", {}).items()}


def build(_settings: Settings) -> ServiceDefinition:
    holder = Holder()

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.tenants = evolve(holder.tenants, env.data)

    async def on_command(env: Envelope[Message]) -> Outcome:
        return answer(env, *decide(holder.tenants, env, holder.clock.now()))

    async def on_telemetry(env: Envelope[Message]) -> Outcome:
        sample = host_sample(env, holder.tenants.hosts, "tenants service")
        last = holder.last_seen.get(sample.host)
        dt = 0.0 if last is None else max(0.0, env.sim_time - last)
        events, progress = track(holder, sample, dt, env.sim_time)

        def keep() -> None:
            # Kept once landed: a sample taken again after a failed append decides the same.
            holder.last_seen[sample.host] = env.sim_time
            holder.progress.update(progress)

        # Worked out on the fold before the events are: a job completed now still holds
        # its scratch in it.
        commands = spills(holder.tenants, events)
        return Outcome(events=events, commands=commands, cause=env, on_landed=[keep])

    async def clusters(env: Envelope[Message]) -> Reply:
        if not isinstance(env.data, ListClusters):
            return QueryFailed(reason=f"the tenants service does not answer {env.type}")
        return ClusterList(clusters=views(holder.tenants))

    async def reconcile_step() -> list[Outcome]:
        return reconcile(holder.tenants)

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        fold_filters=("cluster.>", "vm.>", "contention.>", "ha.>", "host.>"),
        follow=True,
        decide=on_command,
        commands={"tenants-commands": ("cluster.>",)},
        telemetry=on_telemetry,
        queries={"tenants": clusters},
        loops=[Loop("reconcile", reconcile_step, every=RECONCILE_SECONDS)],
        clock=holder.clock,
        carried=holder,
    )


def track(
    holder: Holder, sample: HostTelemetry, dt: float, now: float
) -> tuple[list[Event], dict[str, dict[TaskId, float]]]:
    """Every cluster's tracker steps on for the workers this host reported: the events,
    and each cluster's task progress after the step."""
    t = holder.tenants
    rates = {
        s.vm: 1.0 / s.slowdown
        for s in sample.vms
        if s.vm in t.owner and s.state == "on" and t.running.get(s.vm) == sample.host
    }
    events: list[Event] = []
    after: dict[str, dict[TaskId, float]] = {}
    # By name: a map walks in hash order, which differs from process to process, and a
    # restarted tracker must append the same events in the same order.
    for cluster in sorted(t.clusters):
        step = advance(t, cluster, holder.progress.get(cluster, {}), rates, dt)
        after[cluster] = step.progress
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
    return events, after


def spills(t: Tenants, events: list[Event]) -> list[Command]:
    """Scratch space for the maps just assigned (on their worker's host), and back for
    the jobs just completed."""
    out: list[Command] = []
    for e in events:
        match e:
            case TasksAssigned():
                mib = math.ceil(t.jobs[(e.cluster, e.job)].spec.scratch_mib_per_map)
                for a in e.tasks:
                    host = t.running.get(a.vm)
                    if a.kind is TaskKind.MAP and mib and host is not None:
                        out.append(AllocateScratch(host=host, vm=a.vm, tag=e.job, mib=mib))
            case JobCompleted():
                for host, vm in sorted(t.scratch.get((e.cluster, e.job), frozenset())):
                    if t.running.get(vm) == host:
                        out.append(ReleaseScratch(host=host, vm=vm, tag=e.job))
    return out


def reconcile(t: Tenants) -> list[Outcome]:
    """Ask for the workers each cluster wants and has not got, and take away those it
    no longer wants; each ask is one outcome with a fixed key, so it is made once."""
    out: list[Outcome] = []
    for name in sorted(t.clusters):
        c = t.clusters[name]
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
                out.append(Outcome(commands=[place], key=f"place:{vm}"))
        for number, vm in enumerate(w for w in c.workers if w in t.unrestarted):
            # Lost with its host and not restarted: a new worker takes its place.
            new = worker_name(spec.cluster, c.next_worker + number)
            replaced = ClusterScaled(
                cluster=spec.cluster,
                from_workers=len(c.workers),
                to_workers=len(c.workers),
                added=[new],
                removed=[vm],
                reason=f"{vm} was lost with host {t.lost.get(vm, '?')}",
            )
            out.append(Outcome(events=[replaced], key=f"replace:{vm}"))
        for vm in c.removed:
            # One lost with its host is taken off it when the host is back.
            host = t.running.get(vm) or t.lost.get(vm)
            if host is not None:
                off = [PowerOffVm(vm=vm, host=host), DestroyVm(vm=vm, host=host)]
                out.append(Outcome(commands=off, key=f"remove:{vm}"))
    return out


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
