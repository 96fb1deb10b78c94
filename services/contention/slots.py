"""Task slots from the CPU a worker really gets: a slot per vCPU it can use now.

A worker whose work runs ``slowdown`` times slower than alone gets ``vCPUs / slowdown``
of CPU, so as many map slots, rounded up (at least one, never more than its vCPUs: its
tasks then share no less than it gets), and half that for reduces. The job tracker
then puts new tasks where they will run at full speed instead of queueing more of
them on a crowded host."""

from __future__ import annotations

import math

from schemas.host import HostTelemetry
from schemas.tenants import SlotAllocation
from services.contention.state import Monitor


def slots_for(cpu: int, slowdown: float) -> tuple[int, int]:
    maps = max(1, min(cpu, math.ceil(cpu / max(1.0, slowdown) - 1e-9)))
    return maps, max(1, maps // 2)


def allocations(m: Monitor, sample: HostTelemetry) -> dict[str, list[SlotAllocation]]:
    """Per cluster, the workers on this host whose slots should change."""
    out: dict[str, list[SlotAllocation]] = {}
    for v in sample.vms:
        cluster = m.owner.get(v.vm)
        if cluster is None or v.state != "on" or v.vm not in m.clusters[cluster].workers:
            continue
        c = m.clusters[cluster]
        maps, reduces = slots_for(c.spec.worker_cpu, v.slowdown)
        if (maps, reduces) != c.slots_of(v.vm):
            out.setdefault(cluster, []).append(
                SlotAllocation(vm=v.vm, map_slots=maps, reduce_slots=reduces)
            )
    return out
