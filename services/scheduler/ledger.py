"""The shared pool as an event-sourced ledger: what each host has, and what is reserved.

The fold is pure (``evolve``). ``reserve`` appends a reservation at the host's pool
version: if another scheduler reserved on that host meanwhile, the append is refused,
this ledger catches up with the host's new events, and the caller decides again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from immutables import Map

from schemas import Envelope, Message
from schemas.host import HostCrashed, HostRecovered, HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.scheduling import HostEvacuated, MaintenanceEnded, MaintenanceStarted
from shared.bus import Bus, ConcurrencyError

# Conflicts on one reservation before the scheduler gives up on it for this round.
MAX_ATTEMPTS = 20


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


@dataclass(frozen=True, slots=True)
class Ledger:
    capacity: Mapping[str, Amounts] = field(default_factory=dict)
    reservations: Mapping[str, Mapping[str, CapacityReserved]] = field(default_factory=dict)
    # Each host's pool version: the log sequence of its last pool event (0: none yet).
    versions: Mapping[str, int] = field(default_factory=dict)
    # Where each reservation is (a VM's own reservation names the VM).
    located: Map[str, str] = field(default_factory=Map)
    failed: frozenset[str] = frozenset()
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


def evolve(ledger: Ledger, seq: int, event: Message) -> Ledger:
    new = _evolve(ledger, seq, event)
    # Every event of a host's pool aggregate moves its version, whatever its type.
    pool, _, host = event.aggregate().partition("/")
    if pool == "pool" and host:
        new = replace(new, versions={**new.versions, host: max(seq, new.versions.get(host, 0))})
    return new if new is ledger else replace(new, revision=ledger.revision + 1)


def _evolve(ledger: Ledger, seq: int, event: Message) -> Ledger:  # noqa: PLR0911 - one branch per event
    match event:
        case HostRegistered():
            cap = Amounts(
                event.cpu_cores * event.cpu_mhz,
                event.mem_mib,
                event.net_mbps * 2,
                event.storage_mbs,
            )
            return replace(ledger, capacity={**ledger.capacity, event.host: cap})
        case CapacityReserved():
            held = {**ledger.reservations.get(event.host, {}), event.reservation: event}
            located = ledger.located.set(event.reservation, event.host)
            return replace(
                ledger, reservations={**ledger.reservations, event.host: held}, located=located
            )
        case CapacityReleased():
            host, name = event.host, event.reservation
            held = {k: v for k, v in ledger.reservations.get(host, {}).items() if k != name}
            located = ledger.located
            # A VM that moved is reserved on its new host before it is released on the old.
            if located.get(name) == host:
                located = located.delete(name)
            return replace(
                ledger, reservations={**ledger.reservations, host: held}, located=located
            )
        case HostCrashed():
            return replace(ledger, failed=ledger.failed | {event.host})
        case HostRecovered():
            return replace(ledger, failed=ledger.failed - {event.host})
        case MaintenanceStarted():
            return replace(
                ledger,
                maintenance={**ledger.maintenance, event.host: seq},
                evacuated=ledger.evacuated - {event.host},
            )
        case MaintenanceEnded():
            maintenance = {h: s for h, s in ledger.maintenance.items() if h != event.host}
            return replace(
                ledger, maintenance=maintenance, evacuated=ledger.evacuated - {event.host}
            )
        case HostEvacuated():
            return replace(ledger, evacuated=ledger.evacuated | {event.host})
    return ledger


Choose = Callable[[Ledger], CapacityReserved | None]
# Append a reservation at an expected pool version (ConcurrencyError when stale).
AppendAt = Callable[[CapacityReserved, int], Awaitable[None]]
# Fold a host's pool events from a log sequence on.
CatchUp = Callable[[str, int], Awaitable[None]]


@dataclass
class Reserved:
    reservation: CapacityReserved | None
    conflicts: int


async def reserve(
    current: Callable[[], Ledger],
    choose: Choose,
    append_at: AppendAt,
    catch_up: CatchUp,
) -> Reserved:
    """Append the reservation ``choose`` makes against the current ledger; on a conflict,
    catch up with that host and choose again. None when nothing fits (any more). Every
    bus checks an expected version atomically, so a reservation that lands fits."""
    conflicts = 0
    for _ in range(MAX_ATTEMPTS):
        wanted = choose(current())
        if wanted is None:
            return Reserved(None, conflicts)
        version = current().versions.get(wanted.host, 0)
        try:
            await append_at(wanted, version)
        except ConcurrencyError:
            conflicts += 1
            await catch_up(wanted.host, current().versions.get(wanted.host, 0) + 1)
            continue
        return Reserved(wanted, conflicts)
    return Reserved(None, conflicts)


@dataclass
class LedgerView:
    """A ledger kept by appending through one bus: what tests and tools use; a service
    keeps its ledger in its fold and appends through its runtime instead."""

    bus: Bus
    producer: str
    ledger: Ledger = field(default_factory=Ledger)
    conflicts: int = 0

    def fold(self, seq: int, env: Envelope[Message]) -> None:
        self.ledger = evolve(self.ledger, seq, env.data)

    async def append_at(self, reservation: CapacityReserved, version: int) -> None:
        env = Envelope.wrap(reservation, producer=self.producer)
        result = await self.bus.append(env, expected_version=version)
        self.fold(result.seq, env)

    async def catch_up(self, host: str, since: int) -> None:
        """Read the host's pool events from ``since`` on."""
        async for entry in self.bus.replay(from_seq=since, filters=(f"pool.{host}",)):
            if entry.envelope is not None:
                self.fold(entry.seq, entry.envelope)

    async def reserve(self, choose: Choose) -> CapacityReserved | None:
        done = await reserve(lambda: self.ledger, choose, self.append_at, self.catch_up)
        self.conflicts += done.conflicts
        return done.reservation
