"""The pool as the log tells it, read independently of the schedulers' ledger: what each
host has, what is reserved on it, event by event; and how that compares with what the
hosts run. The reconciliation check (``vplane ledger``) and the tests' audits use it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas import Message
from schemas.host import HostRegistered
from schemas.pool import MHZ_PER_VCPU, CapacityReleased, CapacityReserved
from schemas.queries import VmView
from shared.bus import Bus


@dataclass(frozen=True, slots=True)
class OverCapacity:
    seq: int
    host: str
    resource: str
    reserved: float
    capacity: float


@dataclass(frozen=True, slots=True)
class CountedTwice:
    """One workload's memory reserved twice on one host at once (say, a migrated VM's own
    reservation next to its migration's incoming one)."""

    seq: int
    host: str
    workload: str
    reservations: tuple[str, ...]


@dataclass
class PoolReplay:
    """Reservations per host, folded one event at a time."""

    capacity: dict[str, tuple[float, float]] = field(default_factory=dict)
    held: dict[str, dict[str, CapacityReserved]] = field(default_factory=dict)
    over: list[OverCapacity] = field(default_factory=list)
    twice: list[CountedTwice] = field(default_factory=list)

    def apply(self, seq: int, event: Message) -> None:
        match event:
            case HostRegistered():
                self.capacity[event.host] = (event.cpu_cores * event.cpu_mhz, event.mem_mib)
            case CapacityReserved():
                host = self.held.setdefault(event.host, {})
                if event.replaces is not None:
                    host.pop(event.replaces, None)
                host[event.reservation] = event
                self._check(seq, event.host)
                same = tuple(
                    sorted(
                        r.reservation
                        for r in host.values()
                        if r.workload == event.workload and r.mem_mib > 0
                    )
                )
                if len(same) > 1:
                    self.twice.append(CountedTwice(seq, event.host, event.workload, same))
            case CapacityReleased():
                self.held.get(event.host, {}).pop(event.reservation, None)

    def reserved(self, host: str) -> tuple[float, float]:
        rows = self.held.get(host, {}).values()
        return sum(r.cpu_mhz for r in rows), sum(r.mem_mib for r in rows)

    def vms(self) -> dict[str, CapacityReserved]:
        """Each VM's own reservation (the latest, wherever it is)."""
        return {
            r.reservation: r
            for rows in self.held.values()
            for r in rows.values()
            if r.purpose == "vm"
        }

    def _check(self, seq: int, host: str) -> None:
        cap = self.capacity.get(host)
        if cap is None:
            return
        for resource, used, limit in zip(
            ("cpu_mhz", "mem_mib"), self.reserved(host), cap, strict=True
        ):
            if used > limit + 1e-6:
                self.over.append(OverCapacity(seq, host, resource, used, limit))


async def pool_from_log(bus: Bus) -> PoolReplay:
    """The pool as the whole log tells it, read independently of the schedulers."""
    pool = PoolReplay()
    async for entry in bus.replay(filters=("host.>", "pool.>")):
        if entry.envelope is not None:
            pool.apply(entry.seq, entry.envelope.data)
    return pool


def differences(pool: PoolReplay, vms: Iterable[VmView]) -> list[str]:
    """Where the ledger and the hosts disagree: a VM with no reservation, or one on
    another host or of another size; a VM reservation for no VM. Empty when they agree."""
    held = pool.vms()
    out = []
    running = {v.vm: v for v in vms}
    for name, vm in sorted(running.items()):
        r = held.get(name)
        if r is None:
            out.append(f"{name}: runs on {vm.host} with no reservation")
            continue
        if r.host != vm.host:
            out.append(f"{name}: runs on {vm.host}, reserved on {r.host}")
        if r.mem_mib != vm.mem_mib or max(1, math.floor(r.cpu_mhz / MHZ_PER_VCPU)) != vm.cpu:
            out.append(
                f"{name}: runs with {vm.cpu} vCPU, {vm.mem_mib} MiB; reserved "
                f"{r.cpu_mhz:.0f} MHz, {r.mem_mib:.0f} MiB"
            )
    for name, r in sorted(held.items()):
        if name not in running:
            out.append(f"{name}: reserved on {r.host} for no VM")
    return out
