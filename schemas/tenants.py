"""Elastic tenant clusters (Hadoop-like): workers, MapReduce jobs, task slots."""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, Part, Query, Reply, registry
from schemas.pool import Owner


class _ClusterCommand(Command):
    cluster: Name

    def aggregate(self) -> str:
        return f"cluster/{self.cluster}"


class _ClusterEvent(Event):
    cluster: Name

    def aggregate(self) -> str:
        return f"cluster/{self.cluster}"


@registry.register
class CreateCluster(_ClusterCommand):
    """A tenant cluster: a job tracker and ``workers`` worker VMs placed through the
    scheduler of its priority; it is scaled between ``min_workers`` and ``max_workers``."""

    workers: int = Field(ge=0, le=500)
    min_workers: int = Field(0, ge=0, le=500)
    max_workers: int = Field(ge=1, le=500)
    priority: Owner = Owner.LOW
    worker_cpu: int = Field(2, ge=1, le=64)
    worker_mem_mib: int = Field(4096, ge=256, le=256 * 1024)


@registry.register
class ClusterCreated(_ClusterEvent):
    workers: int = Field(ge=0)
    min_workers: int = Field(ge=0)
    max_workers: int = Field(ge=1)
    priority: Owner
    worker_cpu: int = Field(ge=1)
    worker_mem_mib: int = Field(ge=256)


@registry.register
class ScaleCluster(_ClusterCommand):
    """Grow or shrink a cluster by ``delta`` workers (never beyond its bounds); shrinking
    takes the workers on ``host`` first."""

    delta: int = Field(ge=-500, le=500)
    host: Name | None = None
    reason: str = Field("", max_length=500)


@registry.register
class ClusterScaled(_ClusterEvent):
    """The cluster's wanted size changed; ``added`` are asked of the scheduler, ``removed``
    are decommissioned (their tasks go back to the queue)."""

    from_workers: int = Field(ge=0)
    to_workers: int = Field(ge=0)
    added: list[Name] = Field(default_factory=list)
    removed: list[Name] = Field(default_factory=list)
    reason: str = ""


class TaskKind(enum.StrEnum):
    MAP = "map"
    REDUCE = "reduce"


@registry.register
class SubmitJob(_ClusterCommand):
    """A MapReduce job: ``maps`` map tasks, then ``reduces`` reduce tasks, each needing
    that many CPU-seconds on one slot; map outputs spill to the host's scratch pool."""

    job: Name
    maps: int = Field(ge=0, le=100_000)
    reduces: int = Field(0, ge=0, le=100_000)
    map_cpu_seconds: float = Field(10.0, gt=0, le=86_400)
    reduce_cpu_seconds: float = Field(10.0, gt=0, le=86_400)
    scratch_mib_per_map: float = Field(64.0, ge=0, le=1024 * 1024)


@registry.register
class JobSubmitted(_ClusterEvent):
    job: Name
    maps: int = Field(ge=0)
    reduces: int = Field(ge=0)
    map_cpu_seconds: float = Field(gt=0)
    reduce_cpu_seconds: float = Field(gt=0)
    scratch_mib_per_map: float = Field(ge=0)
    submitted_sim_time: float = Field(ge=0, description="emulated time it was submitted")


class Assignment(Part):
    vm: Name
    kind: TaskKind
    task: int = Field(ge=0)


@registry.register
class TasksAssigned(_ClusterEvent):
    """The job tracker put tasks in free active slots."""

    job: Name
    tasks: list[Assignment]


@registry.register
class TasksFinished(_ClusterEvent):
    """Tasks done; ``requeued`` lost their slot (worker gone or slot deactivated) and wait
    for another."""

    job: Name
    done: list[Assignment] = Field(default_factory=list)
    requeued: list[Assignment] = Field(default_factory=list)


@registry.register
class JobCompleted(_ClusterEvent):
    job: Name
    elapsed_seconds: float = Field(ge=0, description="emulated, from submission")


class SlotAllocation(Part):
    vm: Name
    map_slots: int = Field(ge=0, le=256)
    reduce_slots: int = Field(ge=0, le=256)


@registry.register
class AllocateSlots(_ClusterCommand):
    """How many map and reduce slots each worker should offer now."""

    slots: list[SlotAllocation]
    reason: str = Field("", max_length=500)


@registry.register
class SlotsAllocated(_ClusterEvent):
    """The job tracker's slots now: it assigns tasks only to these; a worker with more
    running tasks than slots has the extra ones requeued."""

    slots: list[SlotAllocation]
    reason: str = ""


@registry.register
class ListClusters(Query):
    def aggregate(self) -> str:
        return "tenants"


class ClusterView(Part):
    cluster: Name
    priority: Owner
    workers: int = Field(ge=0, description="asked for")
    running: int = Field(ge=0, description="running now")
    min_workers: int = Field(ge=0)
    max_workers: int = Field(ge=1)
    map_slots: int = Field(ge=0)
    reduce_slots: int = Field(ge=0)
    running_tasks: int = Field(ge=0)
    jobs_running: list[Name] = Field(default_factory=list)
    jobs_done: int = Field(0, ge=0)
    contended_hosts: list[Name] = Field(
        default_factory=list, description="hosts of its workers in contention now"
    )


@registry.register
class ClusterList(Reply):
    clusters: list[ClusterView]
