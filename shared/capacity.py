"""The pool as the log tells it, read independently of the schedulers' ledger: what each
host has, what is reserved on it, event by event; and how that compares with what the
hosts run. The reconciliation check (``vplane ledger``) and the tests' audits use it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from schemas import Message
from schemas.host import HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved, vcpus_covered
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


class Room(NamedTuple):
    """A VM's reservation, as far as reconciling it goes."""

    host: str
    cpu_mhz: float
    mem_mib: float


class Runs(NamedTuple):
    """A VM a host runs, as far as reconciling it goes."""

    vm: str
    host: str
    cpu: int
    mem_mib: int


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where the ledger and a host disagree, about ``vm`` on ``host``."""

    vm: str
    host: str
    text: str

    def __str__(self) -> str:
        return f"{self.vm}: {self.text}"


def disagreements(held: Mapping[str, Room], running: Iterable[Runs]) -> list[Difference]:
    """Where VM reservations (by VM) and the VMs hosts run disagree: a VM with no
    reservation, or one on another host or of another size; a reservation for no VM."""
    out = []
    runs = {v.vm: v for v in running}
    for name, vm in sorted(runs.items()):
        r = held.get(name)
        if r is None:
            out.append(Difference(name, vm.host, f"runs on {vm.host} with no reservation"))
            continue
        if r.host != vm.host:
            out.append(Difference(name, vm.host, f"runs on {vm.host}, reserved on {r.host}"))
        if r.mem_mib != vm.mem_mib or vcpus_covered(r.cpu_mhz) != vm.cpu:
            out.append(
                Difference(
                    name,
                    vm.host,
                    f"runs with {vm.cpu} vCPU, {vm.mem_mib} MiB; reserved "
                    f"{r.cpu_mhz:.0f} MHz, {r.mem_mib:.0f} MiB",
                )
            )
    for name, r in sorted(held.items()):
        if name not in runs:
            out.append(Difference(name, r.host, f"reserved on {r.host} for no VM"))
    return out


def differences(pool: PoolReplay, vms: Iterable[VmView]) -> list[str]:
    """Where the ledger and the hosts disagree; empty when they agree."""
    held = {name: Room(r.host, r.cpu_mhz, r.mem_mib) for name, r in pool.vms().items()}
    runs = [Runs(v.vm, v.host, v.cpu, v.mem_mib) for v in vms]
    return [str(d) for d in disagreements(held, runs)]
