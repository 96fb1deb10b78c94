"""Which clusters give up workers when a host is contended, and when they get them back.

Down: the clusters with workers on the host, lowest priority first (then the largest),
each giving up workers there, never below its minimum, until the host's CPU demand is
back under its capacity with a margin. A higher priority is asked only when no cluster
of a lower one had a worker to give there: the point is to protect it.

Up: once the host is calm again and has the headroom for what was taken, each cluster
gets its workers back through the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.contention import Direction, Evidence
from schemas.host import HostTelemetry
from schemas.pool import MHZ_PER_VCPU, Owner
from services.contention.state import Monitor

# What a host's demand should come down to, as a share of its capacity.
TARGET = 0.9
# Headroom a calm host must have, after the returning workers, to take them back.
ROOM = 0.8
# What a worker is taken to need when its telemetry does not say (per vCPU).

_ORDER = {Owner.LOW: 0, Owner.HIGH: 1}


@dataclass(frozen=True, slots=True)
class Scaling:
    cluster: str
    direction: Direction
    delta: int
    reason: str


def scale_down(m: Monitor, sample: HostTelemetry, episode: str, why: Evidence) -> list[Scaling]:
    demand = {v.vm: v.cpu_demand_mhz for v in sample.vms if v.state == "on"}
    here: dict[str, list[str]] = {}
    for vm in demand:
        cluster = m.owner.get(vm)
        if cluster is not None and vm in m.clusters[cluster].workers:
            here.setdefault(cluster, []).append(vm)
    excess = sample.cpu_demand_mhz - TARGET * sample.cpu_capacity_mhz
    order = sorted(here, key=lambda c: (_ORDER[m.clusters[c].spec.priority], -len(here[c]), c))
    out: list[Scaling] = []
    for cluster in order:
        if out and (excess <= 0 or m.clusters[cluster].spec.priority != _tier(m, out)):
            break
        c = m.clusters[cluster]
        if (episode, cluster, Direction.DOWN) in m.decided:
            continue
        spare = len(c.workers) - c.spec.min_workers
        taken = 0
        for vm in sorted(here[cluster], key=lambda v: -demand[v]):
            if taken >= spare or (excess <= 0 and taken):
                break
            excess -= demand[vm]
            taken += 1
        if taken:
            out.append(
                Scaling(
                    cluster,
                    Direction.DOWN,
                    -taken,
                    f"contention on {sample.host}: slowdown {why.slowdown:.2f}, cpu.ready "
                    f"{why.cpu_ready_ms:.0f} ms, demand {why.demand_ratio:.0%} of capacity; "
                    f"{c.spec.priority} priority, {taken} of its {len(here[cluster])} "
                    f"workers there (minimum {c.spec.min_workers})",
                )
            )
    return out


def _tier(m: Monitor, taken: list[Scaling]) -> Owner:
    return m.clusters[taken[0].cluster].spec.priority


def scale_up(m: Monitor, sample: HostTelemetry) -> list[tuple[str, Scaling]]:
    """(episode, scaling) for each cluster owed workers on this calm host, if the host
    has room for them."""
    out = []
    load = float(sample.cpu_demand_mhz)
    for (host, cluster), (episode, count) in sorted(m.owed.items()):
        if host != sample.host or count <= 0 or cluster not in m.clusters:
            continue
        if (episode, cluster, Direction.UP) in m.decided:
            continue
        c = m.clusters[cluster]
        back = min(count, c.spec.max_workers - len(c.workers))
        need = back * c.spec.worker_cpu * MHZ_PER_VCPU
        if back <= 0 or load + need > ROOM * sample.cpu_capacity_mhz:
            continue
        load += need
        reason = (
            f"contention on {host} cleared and it has room: giving back the {back} "
            f"worker(s) taken in {episode}"
        )
        out.append((episode, Scaling(cluster, Direction.UP, back, reason)))
    return out
