"""The shared pool as an event-sourced ledger: what each host has, and what is reserved.

The fold is pure (``evolve``). A reservation is appended at the host's pool version
(its outcome's ``expect``): if another scheduler reserved on that host meanwhile, the
append is refused, the runtime catches up with the host's new events, and the
scheduler decides again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from immutables import Map

from schemas import Message
from schemas.ha import HostFailed, HostReturned
from schemas.host import HostCrashed, HostRecovered, HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.scheduling import HostEvacuated, MaintenanceEnded, MaintenanceStarted
from shared.frozen import changed


@dataclass(frozen=True, slots=True)
class Amounts:
    cpu_mhz: float = 0.0
    mem_mib: float = 0.0
    net_mbps: float = 0.0
    storage_mbs: float = 0.0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.cpu_mhz + other.cpu_mhz,
            self.mem_mib + other.mem_mib,
            self.net_mbps + other.net_mbps,
            self.storage_mbs + other.storage_mbs,
        )

    def __sub__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.cpu_mhz - other.cpu_mhz,
            self.mem_mib - other.mem_mib,
            self.net_mbps - other.net_mbps,
            self.storage_mbs - other.storage_mbs,
        )

    def fits_in(self, other: Amounts) -> bool:
        return (
            self.cpu_mhz <= other.cpu_mhz
            and self.mem_mib <= other.mem_mib
            and self.net_mbps <= other.net_mbps
            and self.storage_mbs <= other.storage_mbs
        )

    @classmethod
    def of(cls, event: CapacityReserved) -> Amounts:
        return cls(event.cpu_mhz, event.mem_mib, event.net_mbps, event.storage_mbs)


# No slots: fold steps change it with ``changed`` (shared/frozen.py).
@dataclass(frozen=True)
class Ledger:
    capacity: Mapping[str, Amounts] = field(default_factory=dict)
    reservations: Mapping[str, Mapping[str, CapacityReserved]] = field(default_factory=dict)
    # Each host's pool version: the log sequence of its last pool event (0: none yet).
    versions: Mapping[str, int] = field(default_factory=dict)
    # Where each reservation is (a VM's own reservation names the VM).
    located: Map[str, str] = field(default_factory=Map)
    crashed: frozenset[str] = frozenset()
    # Declared failed by their silence (HostFailed), until they send telemetry again.
    silent: frozenset[str] = frozenset()
    # Counts the events that changed the ledger: a snapshot built at a revision is current
    # while the revision is.
    revision: int = 0
    # Hosts in maintenance, with the log sequence at which it began.
    maintenance: Mapping[str, int] = field(default_factory=dict)
    evacuated: frozenset[str] = frozenset()

    def reserved(self, host: str) -> Amounts:
        total = Amounts()
        for r in self.reservations.get(host, {}).values():
            total = total + Amounts.of(r)
        return total

    def free(self, host: str) -> Amounts:
        return self.capacity.get(host, Amounts()) - self.reserved(host)

    def holds(self, reservation: str) -> bool:
        return reservation in self.located

    def held(self, reservation: str) -> CapacityReserved | None:
        host = self.located.get(reservation)
        return None if host is None else self.reservations[host].get(reservation)

    def usable(self, host: str) -> bool:
        return host in self.capacity and host not in self.failed and host not in self.maintenance

    @property
    def failed(self) -> frozenset[str]:
        """Hosts that run nothing now: crashed by command, or silent."""
        return self.crashed | self.silent


def evolve(ledger: Ledger, seq: int, event: Message) -> Ledger:
    new = _evolve(ledger, seq, event)
    # Every event of a host's pool aggregate moves its version, whatever its type.
    pool, _, host = event.aggregate().partition("/")
    if pool == "pool" and host:
        new = changed(new, versions={**new.versions, host: max(seq, new.versions.get(host, 0))})
    return new if new is ledger else changed(new, revision=ledger.revision + 1)


def sequenced(ledger: Ledger, seq: int, event: Message) -> Ledger:
    """A ledger that folded ``event`` ahead of the log (at a sequence below any), as if
    folded at ``seq``: the parts of ``evolve`` that keep an event's sequence."""
    changes: dict[str, Mapping[str, int]] = {}
    pool, _, host = event.aggregate().partition("/")
    if pool == "pool" and host:
        changes["versions"] = {**ledger.versions, host: max(seq, ledger.versions.get(host, 0))}
    if isinstance(event, MaintenanceStarted) and event.host in ledger.maintenance:
        changes["maintenance"] = {**ledger.maintenance, event.host: seq}
    return changed(ledger, **changes) if changes else ledger


def _evolve(ledger: Ledger, seq: int, event: Message) -> Ledger:  # noqa: PLR0911 - one branch per event
    match event:
        case HostRegistered():
            cap = Amounts(
                event.cpu_cores * event.cpu_mhz,
                event.mem_mib,
                event.net_mbps * 2,
                event.storage_mbs,
            )
            return changed(ledger, capacity={**ledger.capacity, event.host: cap})
        case CapacityReserved():
            held = {
                **{
                    k: v
                    for k, v in ledger.reservations.get(event.host, {}).items()
                    if k != event.replaces
                },
                event.reservation: event,
            }
            located = ledger.located.set(event.reservation, event.host)
            if event.replaces is not None and located.get(event.replaces) == event.host:
                located = located.delete(event.replaces)
            return changed(
                ledger, reservations={**ledger.reservations, event.host: held}, located=located
            )
        case CapacityReleased():
            host, name = event.host, event.reservation
            held = {k: v for k, v in ledger.reservations.get(host, {}).items() if k != name}
            located = ledger.located
            # A VM that moved is reserved on its new host before it is released on the old.
            if located.get(name) == host:
                located = located.delete(name)
            return changed(
                ledger, reservations={**ledger.reservations, host: held}, located=located
            )
        case HostCrashed():
            return changed(ledger, crashed=ledger.crashed | {event.host})
        case HostRecovered():
            return changed(ledger, crashed=ledger.crashed - {event.host})
        case HostFailed():
            return changed(ledger, silent=ledger.silent | {event.host})
        case HostReturned():
            return changed(ledger, silent=ledger.silent - {event.host})
        case MaintenanceStarted():
            return changed(
                ledger,
                maintenance={**ledger.maintenance, event.host: seq},
                evacuated=ledger.evacuated - {event.host},
            )
        case MaintenanceEnded():
            maintenance = {h: s for h, s in ledger.maintenance.items() if h != event.host}
            return changed(
                ledger, maintenance=maintenance, evacuated=ledger.evacuated - {event.host}
            )
        case HostEvacuated():
            return changed(ledger, evacuated=ledger.evacuated | {event.host})
    return ledger
