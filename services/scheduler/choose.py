"""Where a request goes, against the ledger: filter the hosts, score the rest, explain."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import Candidate, PlacementRequested
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


def demand(cpu: int, mem_mib: int) -> Amounts:
    return Amounts(cpu_mhz=cpu * MHZ_PER_VCPU, mem_mib=float(mem_mib))


def choose(ledger: Ledger, request: PlacementRequested, owner: Owner) -> Choice | None:
    """Balanced placement: the host whose busiest resource is least used afterwards.
    Without a host for the desired size, the best one for the stated minimum (degraded)."""
    sizes = [(request.cpu, request.mem_mib, False)]
    if request.min_cpu is not None or request.min_mem_mib is not None:
        sizes.append((request.min_cpu or request.cpu, request.min_mem_mib or request.mem_mib, True))
    hosts = sorted(ledger.capacity)
    for cpu, mem, degraded in sizes:
        want = demand(cpu, mem)
        fits = [h for h in hosts if want.fits_in(ledger.free(h))]
        if not fits:
            continue
        # Best score first; among equals, the first host by name.
        scored = sorted(
            ((_score(ledger, h, want), h) for h in fits), key=lambda sh: (-sh[0], sh[1])
        )
        best_score, best = scored[0]
        return Choice(
            reservation=CapacityReserved(
                host=best,
                reservation=request.vm,
                workload=request.vm,
                owner=owner,
                cpu_mhz=want.cpu_mhz,
                mem_mib=want.mem_mib,
            ),
            cpu=cpu,
            mem_mib=mem,
            degraded=degraded,
            score=round(best_score, 4),
            runners_up=[Candidate(host=h, score=round(s, 4)) for s, h in scored[1:4]],
            filtered={"capacity": len(hosts) - len(fits)},
        )
    return None


def _score(ledger: Ledger, host: str, want: Amounts) -> float:
    cap, free = ledger.capacity[host], ledger.free(host)
    after = free - want
    used = [
        1 - after.cpu_mhz / cap.cpu_mhz if cap.cpu_mhz else 1.0,
        1 - after.mem_mib / cap.mem_mib if cap.mem_mib else 1.0,
    ]
    return 1.0 - max(used)
