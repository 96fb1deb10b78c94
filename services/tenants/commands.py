"""What the tenants service says to a command, pure: the events, or a typed refusal
with nothing changed."""

from __future__ import annotations

from schemas import Envelope, Event, Message
from schemas.service import CommandRejected, RejectionCode
from schemas.tenants import (
    AllocateSlots,
    ClusterCreated,
    ClusterScaled,
    CreateCluster,
    JobSubmitted,
    ScaleCluster,
    SlotsAllocated,
    SubmitJob,
)
from services.tenants.state import Tenants, worker_name


class _Refused(Exception):
    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def decide(t: Tenants, env: Envelope[Message], now: float) -> list[Event]:
    """``now``: the emulated time, which a job's elapsed time is counted from."""
    cmd = env.data
    try:
        match cmd:
            case CreateCluster():
                return _create(t, cmd)
            case ScaleCluster():
                return [_scale(t, cmd)]
            case SubmitJob():
                return [_submit(t, cmd, now)]
            case AllocateSlots():
                return [_slots(t, cmd)]
    except _Refused as refused:
        return [CommandRejected.of(env, refused.code, refused.reason)]
    return [
        CommandRejected.of(
            env, RejectionCode.WRONG_STATE, f"the tenants service does not handle {env.type}"
        )
    ]


def _create(t: Tenants, cmd: CreateCluster) -> list[Event]:
    if cmd.cluster in t.clusters:
        raise _Refused(RejectionCode.ALREADY_EXISTS, f"cluster {cmd.cluster} exists")
    if cmd.min_workers > cmd.max_workers:
        raise _Refused(
            RejectionCode.INVALID_REQUEST,
            f"minimum {cmd.min_workers} is above maximum {cmd.max_workers}",
        )
    if not cmd.min_workers <= cmd.workers <= cmd.max_workers:
        raise _Refused(
            RejectionCode.INVALID_REQUEST,
            f"{cmd.workers} workers is outside {cmd.min_workers}..{cmd.max_workers}",
        )
    created = ClusterCreated(
        cluster=cmd.cluster,
        workers=cmd.workers,
        min_workers=cmd.min_workers,
        max_workers=cmd.max_workers,
        priority=cmd.priority,
        worker_cpu=cmd.worker_cpu,
        worker_mem_mib=cmd.worker_mem_mib,
    )
    added = [worker_name(cmd.cluster, i) for i in range(cmd.workers)]
    scaled = ClusterScaled(
        cluster=cmd.cluster, from_workers=0, to_workers=cmd.workers, added=added, reason="created"
    )
    return [created, scaled]


def _cluster(t: Tenants, name: str) -> None:
    if name not in t.clusters:
        raise _Refused(RejectionCode.UNKNOWN_CLUSTER, f"no cluster {name}")


def _scale(t: Tenants, cmd: ScaleCluster) -> ClusterScaled:
    _cluster(t, cmd.cluster)
    c = t.clusters[cmd.cluster]
    spec, size = c.spec, len(c.workers)
    target = max(spec.min_workers, min(spec.max_workers, size + cmd.delta))
    if cmd.delta == 0 or target == size:
        bound = "minimum" if cmd.delta < 0 else "maximum"
        raise _Refused(
            RejectionCode.WRONG_STATE,
            f"cluster {cmd.cluster} has {size} workers, at its {bound}"
            if cmd.delta
            else "a scaling needs a non-zero delta",
        )
    if target > size:
        first = c.next_worker
        added = [worker_name(cmd.cluster, first + i) for i in range(target - size)]
        return ClusterScaled(
            cluster=cmd.cluster,
            from_workers=size,
            to_workers=target,
            added=added,
            reason=cmd.reason,
        )
    # Shrink on the named host first, newest workers first, then anywhere.
    on_host = [vm for vm in reversed(c.workers) if t.running.get(vm) == cmd.host]
    others = [vm for vm in reversed(c.workers) if vm not in on_host]
    removed = (on_host + others)[: size - target]
    return ClusterScaled(
        cluster=cmd.cluster,
        from_workers=size,
        to_workers=target,
        removed=removed,
        reason=cmd.reason,
    )


def _submit(t: Tenants, cmd: SubmitJob, now: float) -> JobSubmitted:
    _cluster(t, cmd.cluster)
    if (cmd.cluster, cmd.job) in t.jobs:
        raise _Refused(RejectionCode.ALREADY_EXISTS, f"job {cmd.job} was submitted already")
    if cmd.maps + cmd.reduces == 0:
        raise _Refused(RejectionCode.INVALID_REQUEST, "a job needs at least one task")
    return JobSubmitted(
        cluster=cmd.cluster,
        job=cmd.job,
        maps=cmd.maps,
        reduces=cmd.reduces,
        map_cpu_seconds=cmd.map_cpu_seconds,
        reduce_cpu_seconds=cmd.reduce_cpu_seconds,
        scratch_mib_per_map=cmd.scratch_mib_per_map,
        submitted_sim_time=now,
    )


def _slots(t: Tenants, cmd: AllocateSlots) -> SlotsAllocated:
    _cluster(t, cmd.cluster)
    strangers = sorted(s.vm for s in cmd.slots if t.owner.get(s.vm) != cmd.cluster)
    if strangers:
        raise _Refused(
            RejectionCode.UNKNOWN_VM, f"not workers of {cmd.cluster}: {', '.join(strangers)}"
        )
    # Slots of a worker that has just left are moot: the others still count.
    current = set(t.clusters[cmd.cluster].workers)
    slots = [s for s in cmd.slots if s.vm in current]
    return SlotsAllocated(cluster=cmd.cluster, slots=slots, reason=cmd.reason)
