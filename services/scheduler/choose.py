"""Where a request goes: the ledger as a pool snapshot, decided by the placement core."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import Candidate, PlacementRequested
from services.scheduler.core import (
    Host,
    PlacedVm,
    Policy,
    Pool,
    Request,
    Resources,
    SchedulerError,
    decide,
)
from services.scheduler.ledger import Amounts, Ledger

# A vCPU of a placed VM reserves this much of a host's CPU.
MHZ_PER_VCPU = 1000.0


@dataclass(frozen=True, slots=True)
class Choice:
    reservation: CapacityReserved
    cpu: int
    mem_mib: int
    degraded: bool
    score: float
    runners_up: list[Candidate] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)


def demand(cpu: int, mem_mib: int) -> Resources:
    return Resources(cpu_mhz=cpu * MHZ_PER_VCPU, mem_mib=float(mem_mib))


def pool_of(ledger: Ledger) -> Pool:
    """The ledger as the core's snapshot: every reservation holds its amounts."""
    hosts = [Host(name, _resources(cap)) for name, cap in sorted(ledger.capacity.items())]
    vms = [
        PlacedVm(r.reservation, r.host, _resources(Amounts.of(r)))
        for held in ledger.reservations.values()
        for r in held.values()
        if r.host in ledger.capacity
    ]
    return Pool.build(hosts, vms)


def choose(
    ledger: Ledger, request: PlacementRequested, owner: Owner, policy: Policy = Policy.BALANCED
) -> Choice | None:
    """The core's decision for ``request``, or None when no host can take it (even at
    its stated minimum)."""
    if not ledger.capacity:
        return None
    minimum = None
    if request.min_cpu is not None or request.min_mem_mib is not None:
        minimum = demand(request.min_cpu or request.cpu, request.min_mem_mib or request.mem_mib)
    try:
        decision = decide(
            pool_of(ledger),
            Request(request.vm, demand(request.cpu, request.mem_mib), minimum),
            policy,
        )
    except SchedulerError:
        return None
    if decision.host is None or decision.granted is None:
        return None
    granted = decision.granted
    return Choice(
        reservation=CapacityReserved(
            host=decision.host,
            reservation=request.vm,
            workload=request.vm,
            owner=owner,
            cpu_mhz=granted.cpu_mhz,
            mem_mib=granted.mem_mib,
        ),
        cpu=max(1, math.floor(granted.cpu_mhz / MHZ_PER_VCPU)),
        mem_mib=int(granted.mem_mib),
        degraded=decision.degraded,
        score=round(decision.score or 0.0, 4),
        runners_up=[Candidate(host=c.host, score=round(c.score, 4)) for c in decision.runners_up],
        filtered={f.filter.value: f.removed for f in decision.filters},
    )


def _resources(amounts: Amounts) -> Resources:
    return Resources(amounts.cpu_mhz, amounts.mem_mib, amounts.net_mbps, amounts.storage_mbs)
