"""Where a request goes: the ledger as a pool snapshot, decided by the placement core."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from schemas.pool import MHZ_PER_VCPU, CapacityReserved, Owner, vcpus_covered
from schemas.scheduling import Affinity as AffinityPart
from schemas.scheduling import Candidate, PlacementRules, VmAsk
from services.scheduler.core import (
    Affinity,
    Decision,
    Host,
    HostState,
    PlacedVm,
    Policy,
    Pool,
    Request,
    Resources,
    Rules,
    SchedulerError,
    SpareUncoverable,
    commit,
    decide,
    ha_spare,
)
from services.scheduler.ledger import Amounts, Ledger

VM = "vm"  # the purpose of a VM's own reservation

# A vCPU of a placed VM reserves this much of a host's CPU.


@dataclass(frozen=True, slots=True)
class Choice:
    reservation: CapacityReserved
    cpu: int
    mem_mib: int
    degraded: bool
    score: float
    runners_up: list[Candidate] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)
    # The core's request and decision, to reserve it in a cached pool as well.
    made: tuple[Request, Decision] | None = None


@dataclass
class PoolCache:
    """The pool a scheduler decides on, kept from one decision to the next: building it
    costs time in the number of VMs, deciding on it only in the number of hosts. It is
    rebuilt when the ledger changed by anything but this scheduler's own reservations."""

    pool: Pool | None = None
    revision: int = -1
    owner: Owner | None = None
    builds: int = 0

    def get(self, ledger: Ledger, owner: Owner, failures: int) -> Pool:
        if self.pool is None or ledger.revision != self.revision or owner != self.owner:
            self.pool = view_for(ledger, owner, failures)
            self.revision, self.owner = ledger.revision, owner
            self.builds += 1
        return self.pool

    def copy(self) -> PoolCache:
        pool = None if self.pool is None else self.pool.copy()
        return PoolCache(pool, self.revision, self.owner, self.builds)

    def reserved(self, ledger: Ledger, choice: Choice) -> None:
        """``choice`` was reserved: when that is the one change to the ledger since the
        pool was built, reserve it in the pool too; otherwise build it again next time."""
        if self.pool is not None and choice.made and ledger.revision == self.revision + 1:
            commit(self.pool, *choice.made)
            self.revision = ledger.revision
        else:
            self.pool = None


def demand(cpu: int, mem_mib: int) -> Resources:
    return Resources(cpu_mhz=cpu * MHZ_PER_VCPU, mem_mib=float(mem_mib))


def pool_of(ledger: Ledger) -> Pool:
    """The ledger as the core's snapshot: a VM's reservation is a placed VM; what
    migrations and copies hold is capacity held besides."""
    hosts = [
        Host(name, _resources(cap), _state(ledger, name))
        for name, cap in sorted(ledger.capacity.items())
    ]
    vms, held = [], defaultdict[str, Amounts](Amounts)
    for host, reservations in ledger.reservations.items():
        if host not in ledger.capacity:
            continue
        for r in reservations.values():
            # A VM's reservation on a host it has just left (its release follows in the
            # same append, which another scheduler may see half folded) is held room there,
            # not a second copy of the VM.
            if r.purpose == VM and ledger.located.get(r.reservation) == host:
                vms.append(PlacedVm(r.reservation, host, _resources(Amounts.of(r))))
            else:
                held[host] = held[host] + Amounts.of(r)
    return Pool.build(hosts, vms, {h: _resources(a) for h, a in held.items()})


def view_for(ledger: Ledger, owner: Owner, failures: int) -> Pool:
    """The pool as ``owner`` may use it: the low scheduler never sees the HA spare that
    lets the high VMs of any ``failures`` hosts restart elsewhere."""
    pool = pool_of(ledger)
    if owner is Owner.HIGH or failures == 0:
        return pool
    protect = {
        r.reservation
        for rs in ledger.reservations.values()
        for r in rs.values()
        if r.purpose == VM and r.owner is Owner.HIGH
    }
    try:
        return pool.without(ha_spare(pool, failures, protect))
    except SpareUncoverable:
        # Too few hosts to survive that many failures: there is no spare to hold back.
        return pool


NO_RULES = Rules()


def rules_of(rules: PlacementRules) -> Rules:
    """The core's rules; ``ContradictoryRules`` when they name one thing both ways."""

    def one(a: AffinityPart) -> Affinity:
        return Affinity(frozenset(a.must), frozenset(a.should))

    parts = (
        rules.vm_affinity,
        rules.vm_anti_affinity,
        rules.host_affinity,
        rules.host_anti_affinity,
    )
    if not any(p.must or p.should for p in parts):
        # Most VMs have none.
        return NO_RULES
    return Rules(
        one(rules.vm_affinity),
        one(rules.vm_anti_affinity),
        one(rules.host_affinity),
        one(rules.host_anti_affinity),
    )


def with_partners(rules: Rules, vm: str, others: Mapping[str, PlacementRules]) -> Rules:
    """VM-VM rules hold both ways: a VM that must (or should) be near or apart from ``vm``
    binds ``vm`` to it in turn, whichever of the two is placed or moved later."""
    near_must, near_should, away_must, away_should = (set[str]() for _ in range(4))
    for other, r in others.items():
        if other == vm:
            continue
        for names, bucket in (
            (r.vm_affinity.must, near_must),
            (r.vm_affinity.should, near_should),
            (r.vm_anti_affinity.must, away_must),
            (r.vm_anti_affinity.should, away_should),
        ):
            if vm in names:
                bucket.add(other)
    if not (near_must or near_should or away_must or away_should):
        return rules
    near, away = rules.vm_affinity, rules.vm_anti_affinity
    return replace(
        rules,
        vm_affinity=Affinity(near.must | near_must, near.should | near_should),
        vm_anti_affinity=Affinity(away.must | away_must, away.should | away_should),
    )


def every_rule(others: Mapping[str, PlacementRules]) -> dict[str, Rules]:
    """Each VM's rules with its partners' (``with_partners``), for every VM named."""
    named = set(others)
    for r in others.values():
        named |= {*r.vm_affinity.names(), *r.vm_anti_affinity.names()}
    return {
        vm: with_partners(rules_of(others[vm]) if vm in others else Rules(), vm, others)
        for vm in named
    }


def request_of(ask: VmAsk, others: Mapping[str, PlacementRules] | None = None) -> Request:
    """The core's request (``SchedulerError`` when it is absurd or contradictory);
    ``others``: every VM's rules, which bind this one too (``with_partners``)."""
    minimum = None
    if ask.min_cpu is not None or ask.min_mem_mib is not None:
        minimum = demand(ask.min_cpu or ask.cpu, ask.min_mem_mib or ask.mem_mib)
    rules = with_partners(rules_of(ask.rules), ask.vm, others or {})
    return Request(ask.vm, demand(ask.cpu, ask.mem_mib), minimum, ask.group, rules)


def choose(
    ledger: Ledger,
    ask: VmAsk,
    owner: Owner,
    failures: int = 0,
    pools: PoolCache | None = None,
    others: Mapping[str, PlacementRules] | None = None,
) -> Choice | None:
    """The core's decision for ``ask``, or None when no host can take it (even at its
    stated minimum)."""
    if not ledger.capacity:
        return None
    if ask.fork_of is not None:
        # A fork maps its template's frames: it starts on the template's host, a pin for
        # this placement only (it may move later, its pages leaving as bytes).
        template_host = ledger.located.get(ask.fork_of)
        if template_host is None:
            return None
        pinned = ask.rules.host_affinity.model_copy(update={"must": [template_host]})
        ask = ask.model_copy(
            update={"rules": ask.rules.model_copy(update={"host_affinity": pinned})}
        )
    try:
        pool = (pools or PoolCache()).get(ledger, owner, failures)
        request = request_of(ask, others)
        decision = decide(pool, request, Policy(ask.policy))
    except SchedulerError:
        return None
    if decision.host is None or decision.granted is None:
        return None
    granted = decision.granted
    return Choice(
        reservation=CapacityReserved(
            host=decision.host,
            reservation=ask.vm,
            workload=ask.vm,
            owner=owner,
            cpu_mhz=granted.cpu_mhz,
            mem_mib=granted.mem_mib,
        ),
        cpu=vcpus_covered(granted.cpu_mhz),
        mem_mib=int(granted.mem_mib),
        degraded=decision.degraded,
        made=(request, decision),
        **explained(decision),
    )


def explained(decision: Decision) -> dict[str, Any]:
    """What every placement event says of its decision: score, runners-up, filters."""
    return {
        "score": round(decision.score or 0.0, 4),
        "runners_up": [
            Candidate(host=c.host, score=round(c.score, 4)) for c in decision.runners_up
        ],
        "filtered": {f.filter.value: f.removed for f in decision.filters},
    }


def _state(ledger: Ledger, host: str) -> HostState:
    if host in ledger.failed:
        return HostState.FAILED
    if host in ledger.maintenance:
        return HostState.MAINTENANCE
    return HostState.USABLE


def _resources(amounts: Amounts) -> Resources:
    return Resources(amounts.cpu_mhz, amounts.mem_mib, amounts.net_mbps, amounts.storage_mbs)
