"""A tenant's job tracker, one step at a time, pure.

Each telemetry tick of a host moves the tasks running on that host's workers on by the
CPU their VM actually got: a worker of ``c`` vCPUs slowed ``s`` times gets ``c / s``
vCPUs, shared by its running tasks, each of which can use one at most. So a task
gains ``dt * min(1, c / (s * k))`` CPU-seconds with ``k`` tasks on the worker: fewer
slots on a slowed worker make each of its tasks faster.

The tracker honours slot allocations: it assigns a task only to a free active slot. A
slot taken away is deactivated, not emptied: the task in it runs to its end and the
slot takes no other (killing it would throw its work away). A worker that leaves gives
its tasks back to the queue. A job's reduces start once all its maps are done.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.tenants import Assignment, TaskKind
from services.tenants.state import Job, TaskId, Tenants


@dataclass
class Step:
    assigned: dict[str, list[Assignment]] = field(default_factory=lambda: defaultdict(list))
    done: dict[str, list[Assignment]] = field(default_factory=lambda: defaultdict(list))
    requeued: dict[str, list[Assignment]] = field(default_factory=lambda: defaultdict(list))
    completed: list[Job] = field(default_factory=list)
    progress: dict[TaskId, float] = field(default_factory=dict)

    @property
    def jobs(self) -> list[str]:
        return sorted({*self.assigned, *self.done, *self.requeued})


def advance(
    t: Tenants,
    cluster: str,
    progress: Mapping[TaskId, float],
    rates: Mapping[str, float],
    dt: float,
) -> Step:
    """One step of ``cluster``'s tracker: ``rates`` are the CPU-seconds per second a slot
    gets on each worker that reported this tick (1 / slowdown)."""
    step = Step()
    jobs = {j.spec.job: j for j in t.open_jobs(cluster)}
    step.progress.update(_progress(t, cluster, jobs, progress, rates, dt, step))
    _assign(t, cluster, jobs, step)
    for job in jobs.values():
        finished = job.done | {job.task(a.kind, a.task) for a in step.done[job.spec.job]}
        if len(finished) == job.spec.maps + job.spec.reduces:
            step.completed.append(job)
    return step


def _progress(
    t: Tenants,
    cluster: str,
    jobs: Mapping[str, Job],
    progress: Mapping[TaskId, float],
    rates: Mapping[str, float],
    dt: float,
    step: Step,
) -> dict[TaskId, float]:
    """Move the running tasks on; the finished and orphaned ones go into ``step``, the
    others come back with their progress."""
    active = set(t.active(cluster))
    mine = [(tid, vm) for tid, vm in t.assigned.items() if tid[0] == cluster and tid[1] in jobs]
    sharing: dict[str, int] = defaultdict(int)
    for _, vm in mine:
        sharing[vm] += 1
    cpu = t.clusters[cluster].spec.worker_cpu
    running: dict[TaskId, float] = {}
    for tid, vm in mine:
        share = min(1.0, cpu * rates.get(vm, 0.0) / sharing[vm])
        gained = progress.get(tid, 0.0) + share * dt
        a = Assignment(vm=vm, kind=tid[2], task=tid[3])
        if vm not in active:
            step.requeued[tid[1]].append(a)
        elif gained >= jobs[tid[1]].work(tid[2]) - 1e-9:
            step.done[tid[1]].append(a)
        else:
            running[tid] = gained
    return running


def _assign(t: Tenants, cluster: str, jobs: Mapping[str, Job], step: Step) -> None:
    c = t.clusters[cluster]
    busy: dict[tuple[str, TaskKind], int] = defaultdict(int)
    taken: set[TaskId] = set(step.progress)
    for tid in step.progress:
        busy[(t.assigned[tid], tid[2])] += 1
    free: list[tuple[str, TaskKind]] = []
    for vm in t.active(cluster):
        slots = c.slots_of(vm)
        for kind, limit in ((TaskKind.MAP, slots.map_slots), (TaskKind.REDUCE, slots.reduce_slots)):
            free += [(vm, kind)] * max(0, limit - busy[(vm, kind)])
    for job in jobs.values():
        name = job.spec.job
        done_now = job.done | {job.task(a.kind, a.task) for a in step.done[name]}
        maps_done = sum(1 for d in done_now if d[2] is TaskKind.MAP) == job.spec.maps
        for kind in (TaskKind.MAP, TaskKind.REDUCE):
            if kind is TaskKind.REDUCE and not maps_done:
                continue
            waiting = (
                job.task(kind, i)
                for i in range(job.tasks(kind))
                if job.task(kind, i) not in done_now and job.task(kind, i) not in taken
            )
            for tid in waiting:
                slot = next((s for s in free if s[1] is kind), None)
                if slot is None:
                    break
                free.remove(slot)
                taken.add(tid)
                step.assigned[name].append(Assignment(vm=slot[0], kind=kind, task=tid[3]))
                step.progress[tid] = 0.0
