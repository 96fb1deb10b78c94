"""Two schedulers reserving on the same hosts at once never over-commit any of them."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Callable

import pytest

from schemas import Envelope, Message
from schemas.host import HostRegistered
from schemas.pool import CapacityReserved, Owner
from services.scheduler.ledger import Amounts, Ledger, evolve
from shared.bus import Bus
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.outcome import Outcome
from shared.runtime import Runtime, ServiceDefinition
from shared.testing import running, unique_namespace
from tests.brokers import drop_rabbitmq_namespace

HOSTS = ["h1", "h2", "h3"]
# Each host fits 10 of these; the two schedulers together ask for 40.
SLICE = Amounts(cpu_mhz=1000, mem_mib=1024)


def first_fit(name: str, owner: Owner) -> Callable[[Ledger], CapacityReserved | None]:
    def choose(ledger: Ledger) -> CapacityReserved | None:
        for host in sorted(ledger.capacity):
            if SLICE.fits_in(ledger.free(host)):
                return CapacityReserved(
                    host=host,
                    reservation=name,
                    workload=name,
                    owner=owner,
                    cpu_mhz=SLICE.cpu_mhz,
                    mem_mib=SLICE.mem_mib,
                )
        return None

    return choose


@pytest.fixture(
    params=[
        "memory",
        pytest.param("nats", marks=pytest.mark.broker),
        pytest.param("rabbitmq", marks=pytest.mark.broker),
    ]
)
async def pool_bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    """Every bus checks the expected version atomically (RabbitMQ in log order, by
    each client's log index), so neither ledger ever has to take a reservation back."""
    namespace = unique_namespace()
    bus: Bus
    match request.param:
        case "memory":
            bus = MemoryBus(namespace)
        case "nats":
            bus = NatsBus(request.getfixturevalue("nats_url"), namespace)
        case _:
            bus = RabbitBus(request.getfixturevalue("amqp_url"), namespace)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()
        if isinstance(bus, RabbitBus):
            await asyncio.to_thread(drop_rabbitmq_namespace, bus.url, namespace)


class Reserver:
    """A service that only reserves slices, first fit, through its runtime: the ledger is
    its fold, and each reservation is decided again when another writer got there first."""

    def __init__(self, name: str, owner: Owner) -> None:
        self.name, self.owner = name, owner
        self.ledger = Ledger()

    def definition(self) -> ServiceDefinition:
        def fold(seq: int, env: Envelope[Message]) -> None:
            self.ledger = evolve(self.ledger, seq, env.data)

        return ServiceDefinition(
            name=self.name, fold=fold, fold_filters=("host.>", "pool.>"), follow=True
        )

    def decide(self, n: int) -> Outcome | None:
        wanted = first_fit(f"{self.owner}-{n}", self.owner)(self.ledger)
        if wanted is None:
            return None
        version = self.ledger.versions.get(wanted.host, 0)
        return Outcome(events=[wanted], key=f"slice:{n}", expect={f"pool/{wanted.host}": version})


async def test_concurrent_schedulers_never_over_commit(pool_bus: Bus) -> None:
    """Reservations appended at the host's pool version through two runtimes on two
    connections: when they race, one append is refused, the loser's runtime catches up
    and it decides again; no host is over-committed, and the conflicts are counted."""
    bus = pool_bus
    for h in HOSTS:
        await bus.append(
            Envelope.wrap(
                HostRegistered(host=h, cpu_cores=10, cpu_mhz=1000, mem_mib=10 * 1024), producer="t"
            )
        )
    # Each runtime has a connection of its own (it closes it when it stops).
    own: list[Bus] = [bus, bus]
    if isinstance(bus, NatsBus | RabbitBus):
        own = [type(bus)(bus.url, bus.namespace) for _ in range(2)]
    services = [Reserver("sched-0", Owner.HIGH), Reserver("sched-1", Owner.LOW)]
    runtimes = [
        Runtime(services[0].definition(), own[0], "i0"),
        Runtime(services[1].definition(), own[1], "i1"),
    ]

    async def scheduler(i: int) -> None:
        rng = random.Random(i)
        for n in range(20):
            await asyncio.sleep(rng.random() / 1000)
            async with runtimes[i].exclusive():
                await runtimes[i].settle(functools.partial(services[i].decide, n))

    async with running(runtimes[0], timeout=30), running(runtimes[1], timeout=30):
        await asyncio.gather(scheduler(0), scheduler(1))
    truth = Ledger()
    async for entry in bus.replay():
        if entry.envelope is not None:
            truth = evolve(truth, entry.seq, entry.envelope.data)
    for h in HOSTS:
        assert truth.free(h).cpu_mhz >= 0
        assert len(truth.reservations[h]) == 10
    assert sum(len(truth.reservations[h]) for h in HOSTS) == 30  # the other 10 found no room
    assert runtimes[0].conflicts + runtimes[1].conflicts > 0
