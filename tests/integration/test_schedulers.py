"""The two priority schedulers on one pool, as processes on a real NATS server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import PlaceVm
from shared.bus.nats import NatsBus
from shared.client import Client
from shared.testing import unique_namespace
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]

ROUND = 3.0


@pytest.fixture
async def stack(nats_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    """One 64 GiB host and both schedulers, rounds every few seconds."""
    bus = NatsBus(nats_url, unique_namespace())
    await bus.start()
    client = Client(bus, producer="test")
    base = {
        "VPLANE_BUS_URL": nats_url,
        "VPLANE_NAMESPACE": bus.namespace,
        "VPLANE_HOSTS": "1",
        "VPLANE_ROUND_SECONDS": str(ROUND),
    }
    services = [("hosts", base)] + [
        ("scheduler", {**base, "VPLANE_PRIORITY": prio}) for prio in ("high", "low")
    ]
    procs = await start_ready(client, services, tmp_path)
    try:
        yield client
    finally:
        # A scheduler is seen, rarely, slow to exit: stop_all kills it after 30 s.
        await stop_all(procs)
        await bus.close()


async def test_high_places_before_low_within_a_round(stack: Client) -> None:
    """Asked in the same round for more than the host holds, the high-priority VM gets
    the host even though the low one asked first; the low one is refused."""
    client = stack
    # Start right after a round ended (low finishes it): the next is a whole period away.
    await client.wait_for(
        lambda e: e.type == "RoundCompleted" and e.data.priority == "low",  # type: ignore[attr-defined]
        timeout=3 * ROUND,
    )
    results: list[Envelope[Message]] = []

    async def ask() -> None:
        await client.send(PlaceVm(vm="low-vm", priority=Owner.LOW, cpu=2, mem_mib=40_000))
        await client.send(PlaceVm(vm="high-vm", priority=Owner.HIGH, cpu=2, mem_mib=40_000))

    results = await client.wait_for(
        lambda e: (
            e.type in {"VmPlaced", "CommandRejected"} and e.subject in {"vm/low-vm", "vm/high-vm"}
        ),
        count=2,
        before=ask,
        timeout=4 * ROUND,
    )
    by_vm = {e.subject: e for e in results}
    assert by_vm["vm/high-vm"].type == "VmPlaced", [(e.type, e.producer, e.data) for e in results]
    assert by_vm["vm/low-vm"].type == "CommandRejected"
    assert by_vm["vm/low-vm"].data.code == "insufficient-capacity"  # type: ignore[attr-defined]
    placed = by_vm["vm/high-vm"].data
    assert placed.host == "h1"  # type: ignore[attr-defined]
    assert placed.filtered["capacity"] == 0  # type: ignore[attr-defined]
    assert set(placed.filtered) >= {"state", "capacity", "vm_anti_affinity"}  # type: ignore[attr-defined]


async def test_a_name_asked_of_both_schedulers_is_refused_the_second_time(stack: Client) -> None:
    """VM names are unique across priorities: the second request is refused at once."""
    client = stack
    [first] = await client.send_and_wait(
        PlaceVm(vm="twice", priority=Owner.HIGH, cpu=1, mem_mib=64), timeout=30
    )
    assert first.type == "PlacementRequested"
    await client.wait_for(
        lambda e: e.type == "VmCreated" and e.subject == "vm/twice", timeout=4 * ROUND
    )
    [second] = await client.send_and_wait(
        PlaceVm(vm="twice", priority=Owner.LOW, cpu=1, mem_mib=64), timeout=30
    )
    assert second.type == "CommandRejected"
    assert second.data.code == "already-exists"  # type: ignore[attr-defined]
