"""The tenant clusters as a fold: each cluster's bounds and workers, where the workers
run, their task slots, and the jobs with the tasks assigned and finished."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TypeVar

from immutables import Map

from schemas import Message
from schemas.contention import ContentionCleared, ContentionDetected
from schemas.ha import HostFailed, VmRestarted, VmRestartFailed
from schemas.host import HostCrashed, HostRegistered
from schemas.service import CommandRejected, RejectionCode
from schemas.tenants import (
    Assignment,
    ClusterCreated,
    ClusterScaled,
    JobCompleted,
    JobSubmitted,
    SlotAllocation,
    SlotsAllocated,
    TaskKind,
    TasksAssigned,
    TasksFinished,
)
from schemas.transfers import MigrationCompleted
from schemas.vm import VmCreated, VmDestroyed

TaskId = tuple[str, str, TaskKind, int]  # (cluster, job, kind, index)


@dataclass(frozen=True, slots=True)
class Cluster:
    spec: ClusterCreated
    wanted: int
    # Every worker asked for and not removed, by VM name; the next worker's number.
    workers: tuple[str, ...] = ()
    next_worker: int = 0
    removed: frozenset[str] = frozenset()
    slots: Map[str, SlotAllocation] = field(default_factory=Map)

    def default_slots(self, vm: str) -> SlotAllocation:
        """Until the monitor says otherwise, a slot per vCPU for maps, half for reduces."""
        cpu = self.spec.worker_cpu
        return SlotAllocation(vm=vm, map_slots=cpu, reduce_slots=max(1, cpu // 2))

    def slots_of(self, vm: str) -> SlotAllocation:
        return self.slots.get(vm) or self.default_slots(vm)


@dataclass(frozen=True, slots=True)
class Job:
    spec: JobSubmitted
    done: frozenset[TaskId] = frozenset()
    completed: bool = False

    def tasks(self, kind: TaskKind) -> int:
        return self.spec.maps if kind is TaskKind.MAP else self.spec.reduces

    def work(self, kind: TaskKind) -> float:
        s = self.spec
        return s.map_cpu_seconds if kind is TaskKind.MAP else s.reduce_cpu_seconds

    def task(self, kind: TaskKind, index: int) -> TaskId:
        return (self.spec.cluster, self.spec.job, kind, index)


@dataclass(frozen=True, slots=True)
class Tenants:
    clusters: Map[str, Cluster] = field(default_factory=Map)
    # Worker VM -> (cluster, host) once it runs; worker VM -> cluster while asked for.
    running: Map[str, str] = field(default_factory=Map)
    owner: Map[str, str] = field(default_factory=Map)
    jobs: Map[tuple[str, str], Job] = field(default_factory=Map)
    # Tasks in a slot: task -> VM. Progress is not logged: it is carried over a restart in
    # ServiceStopped; after a process killed outright a running task starts again, as on
    # a restarted job tracker.
    assigned: Map[TaskId, str] = field(default_factory=Map)
    # Hosts in contention now (the contention monitor's episodes), and every registered one.
    contended: frozenset[str] = frozenset()
    hosts: frozenset[str] = frozenset()
    # Hosts that took scratch space for a job: (cluster, job) -> {(host, vm)}.
    scratch: Map[tuple[str, str], frozenset[tuple[str, str]]] = field(default_factory=Map)
    # Workers lost with their host (worker -> that host), and those of them that their
    # scheduler could not restart elsewhere: the cluster replaces those.
    lost: Map[str, str] = field(default_factory=Map)
    unrestarted: Map[str, bool] = field(default_factory=Map)

    def active(self, cluster: str) -> list[str]:
        """The cluster's workers that run now, in the order they were asked for."""
        c = self.clusters[cluster]
        return [vm for vm in c.workers if vm in self.running]

    def open_jobs(self, cluster: str) -> list[Job]:
        jobs = [j for (c, _), j in self.jobs.items() if c == cluster and not j.completed]
        return sorted(jobs, key=lambda j: (j.spec.submitted_sim_time, j.spec.job))


def worker_name(cluster: str, number: int) -> str:
    return f"{cluster}-w{number}"


def evolve(t: Tenants, event: Message) -> Tenants:  # noqa: PLR0911, PLR0912
    if isinstance(event, VmRestarted | VmRestartFailed | HostFailed | HostCrashed):
        return _lost_with_hosts(t, event)
    match event:
        case HostRegistered():
            return replace(t, hosts=t.hosts | {event.host})
        case ClusterCreated():
            cluster = Cluster(spec=event, wanted=event.workers)
            return replace(t, clusters=t.clusters.set(event.cluster, cluster))
        case ClusterScaled():
            c = t.clusters[event.cluster]
            workers = tuple(w for w in (*c.workers, *event.added) if w not in event.removed)
            numbers = [int(w.rsplit("-w", 1)[1]) for w in event.added] or [c.next_worker - 1]
            owner = t.owner
            for vm in event.added:
                owner = owner.set(vm, event.cluster)
            c = replace(
                c,
                wanted=event.to_workers,
                workers=workers,
                next_worker=max(c.next_worker, max(numbers) + 1),
                removed=c.removed | set(event.removed),
            )
            return replace(t, clusters=t.clusters.set(event.cluster, c), owner=owner)
        case VmCreated() if event.vm in t.owner:
            return replace(t, running=t.running.set(event.vm, event.host))
        case MigrationCompleted() if event.vm in t.running:
            return replace(t, running=t.running.set(event.vm, event.target))
        case VmDestroyed() if event.vm in t.running or event.vm in t.lost:
            return replace(
                t,
                running=_without(t.running, event.vm),
                lost=_without(t.lost, event.vm),
                unrestarted=_without(t.unrestarted, event.vm),
            )
        case CommandRejected() if (
            event.command_type == "PlaceVm" and event.code != RejectionCode.ALREADY_EXISTS
        ):
            # A worker the scheduler could not place: the cluster is smaller by one (a
            # second request for a worker already asked for is refused, not the worker).
            vm = event.about.removeprefix("vm/")
            name = t.owner.get(vm)
            if name is None:
                return t
            c = t.clusters[name]
            c = replace(c, workers=tuple(w for w in c.workers if w != vm))
            return replace(t, clusters=t.clusters.set(name, c))
        case SlotsAllocated():
            c = t.clusters[event.cluster]
            slots = c.slots
            for s in event.slots:
                slots = slots.set(s.vm, s)
            return replace(t, clusters=t.clusters.set(event.cluster, replace(c, slots=slots)))
        case JobSubmitted():
            return replace(t, jobs=t.jobs.set((event.cluster, event.job), Job(event)))
        case TasksAssigned():
            assigned, key = t.assigned, (event.cluster, event.job)
            spills = t.jobs[key].spec.scratch_mib_per_map > 0
            held = t.scratch.get(key, frozenset())
            for a in event.tasks:
                assigned = assigned.set(_task(event.cluster, event.job, a), a.vm)
                if spills and a.kind is TaskKind.MAP and a.vm in t.running:
                    held |= {(t.running[a.vm], a.vm)}
            return replace(t, assigned=assigned, scratch=t.scratch.set(key, held))
        case TasksFinished():
            key = (event.cluster, event.job)
            job = t.jobs[key]
            assigned = t.assigned
            for a in (*event.done, *event.requeued):
                tid = _task(event.cluster, event.job, a)
                if tid in assigned:
                    assigned = assigned.delete(tid)
            done = job.done | {_task(event.cluster, event.job, a) for a in event.done}
            return replace(t, assigned=assigned, jobs=t.jobs.set(key, replace(job, done=done)))
        case ContentionDetected():
            return replace(t, contended=t.contended | {event.host})
        case ContentionCleared():
            return replace(t, contended=t.contended - {event.host})
        case JobCompleted():
            key = (event.cluster, event.job)
            job = replace(t.jobs[key], completed=True)
            return replace(t, jobs=t.jobs.set(key, job))
    return t


def _task(cluster: str, job: str, a: Assignment) -> TaskId:
    return (cluster, job, a.kind, a.task)


def _lost_with_hosts(
    t: Tenants, event: VmRestarted | VmRestartFailed | HostFailed | HostCrashed
) -> Tenants:
    match event:
        case VmRestarted() if event.vm in t.owner:
            return replace(
                t,
                running=t.running.set(event.vm, event.host),
                lost=_without(t.lost, event.vm),
                unrestarted=_without(t.unrestarted, event.vm),
            )
        case VmRestartFailed() if event.vm in t.owner:
            return replace(t, unrestarted=t.unrestarted.set(event.vm, True))
        case HostFailed() | HostCrashed():
            # A worker on a lost host runs no task until it is restarted elsewhere.
            names = event.vms if isinstance(event, HostFailed) else event.vms_lost
            gone = [vm for vm in names if t.running.get(vm) == event.host]
            running, lost = t.running, t.lost
            for vm in gone:
                running, lost = running.delete(vm), lost.set(vm, event.host)
            return replace(t, running=running, lost=lost) if gone else t
    return t


K = TypeVar("K")
V = TypeVar("V")


def _without(mapping: Map[K, V], key: K) -> Map[K, V]:
    return mapping.delete(key) if key in mapping else mapping
