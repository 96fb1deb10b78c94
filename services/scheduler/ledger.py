"""The shared pool as an event-sourced ledger: what each host has, and what is reserved.

The fold is pure (``evolve``). ``reserve`` appends a reservation at the host's pool
version: if another scheduler reserved on that host meanwhile, the append is refused,
this ledger catches up with the host's new events, and the caller decides again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Message
from schemas.host import HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved
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

    def reserved(self, host: str) -> Amounts:
        total = Amounts()
        for r in self.reservations.get(host, {}).values():
            total = total + Amounts.of(r)
        return total

    def free(self, host: str) -> Amounts:
        return self.capacity.get(host, Amounts()) - self.reserved(host)

    def holds(self, reservation: str) -> bool:
        return any(reservation in rs for rs in self.reservations.values())


def evolve(ledger: Ledger, seq: int, event: Message) -> Ledger:
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
            return _at(ledger, event.host, seq, held)
        case CapacityReleased():
            held = {
                k: v
                for k, v in ledger.reservations.get(event.host, {}).items()
                if k != event.reservation
            }
            return _at(ledger, event.host, seq, held)
    return ledger


def _at(ledger: Ledger, host: str, seq: int, held: Mapping[str, CapacityReserved]) -> Ledger:
    return replace(
        ledger,
        reservations={**ledger.reservations, host: held},
        versions={**ledger.versions, host: max(seq, ledger.versions.get(host, 0))},
    )


Choose = Callable[[Ledger], CapacityReserved | None]
# Append a reservation at an expected pool version (ConcurrencyError when stale).
AppendAt = Callable[[CapacityReserved, int], Awaitable[None]]
CatchUp = Callable[[str], Awaitable[None]]


@dataclass
class Reserved:
    reservation: CapacityReserved | None
    conflicts: int


async def reserve(
    current: Callable[[], Ledger], choose: Choose, append_at: AppendAt, catch_up: CatchUp
) -> Reserved:
    """Append the reservation ``choose`` makes against the current ledger; on a conflict,
    catch up with that host and choose again. None when nothing fits (any more)."""
    conflicts = 0
    for _ in range(MAX_ATTEMPTS):
        wanted = choose(current())
        if wanted is None:
            return Reserved(None, conflicts)
        try:
            await append_at(wanted, current().versions.get(wanted.host, 0))
        except ConcurrencyError:
            conflicts += 1
            await catch_up(wanted.host)
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

    async def catch_up(self, host: str) -> None:
        """Read the host's pool events this ledger has not seen yet."""
        since = self.ledger.versions.get(host, 0) + 1
        async for entry in self.bus.replay(from_seq=since, filters=(f"pool.{host}",)):
            if entry.envelope is not None:
                self.fold(entry.seq, entry.envelope)

    async def reserve(self, choose: Choose) -> CapacityReserved | None:
        done = await reserve(lambda: self.ledger, choose, self.append_at, self.catch_up)
        self.conflicts += done.conflicts
        return done.reservation
