"""Two schedulers reserving on the same hosts at once never over-commit any of them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from schemas import Envelope
from schemas.host import HostRegistered
from schemas.pool import CapacityReserved, Owner
from services.scheduler.ledger import Amounts, Choose, Ledger, LedgerView
from shared.bus import Bus
from shared.bus.memory import MemoryBus
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.testing import unique_namespace
from tests.brokers import drop_rabbitmq_namespace

HOSTS = ["h1", "h2", "h3"]
# Each host fits 10 of these; the two schedulers together ask for 40.
SLICE = Amounts(cpu_mhz=1000, mem_mib=1024)


def first_fit(name: str, owner: Owner) -> Choose:
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


async def test_concurrent_schedulers_never_over_commit(pool_bus: Bus) -> None:
    """Reservations appended at the host's pool version: when two schedulers race, one
    append is refused, the loser catches up and tries again; no host is over-committed,
    and the conflicts are counted."""
    bus = pool_bus
    for h in HOSTS:
        await bus.append(
            Envelope.wrap(
                HostRegistered(host=h, cpu_cores=10, cpu_mhz=1000, mem_mib=10 * 1024), producer="t"
            )
        )
    second: Bus = bus
    if isinstance(bus, NatsBus | RabbitBus):
        second = type(bus)(bus.url, bus.namespace)
    if second is not bus:
        await second.start()
    views = [LedgerView(bus, "sched-0"), LedgerView(second, "sched-1")]
    for view in views:
        async for entry in bus.replay():
            if entry.envelope is not None:
                view.fold(entry.seq, entry.envelope)

    async def scheduler(i: int, b: Bus, owner: Owner) -> list[CapacityReserved | None]:
        rng = random.Random(i)
        out = []
        for n in range(20):
            await asyncio.sleep(rng.random() / 1000)
            out.append(await views[i].reserve(first_fit(f"{owner}-{n}", owner)))
        return out

    try:
        high, low = await asyncio.gather(
            scheduler(0, bus, Owner.HIGH), scheduler(1, second, Owner.LOW)
        )
    finally:
        if second is not bus:
            await second.close()
    placed = [r for r in high + low if r is not None]
    assert len(placed) == 30  # 3 hosts x 10 slices; the other 10 found no room

    truth = LedgerView(bus, "truth")
    async for entry in bus.replay():
        if entry.envelope is not None:
            truth.fold(entry.seq, entry.envelope)
    for h in HOSTS:
        assert truth.ledger.free(h).cpu_mhz >= 0
        assert len(truth.ledger.reservations[h]) == 10
    assert views[0].conflicts + views[1].conflicts > 0
