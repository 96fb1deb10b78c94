"""The two priority schedulers on one pool, as processes on each broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import PlaceVm
from shared.client import Client
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]

ROUND = 3.0


@pytest.fixture
async def stack(client: Client, bus_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    """One 64 GiB host and both schedulers, rounds every few seconds."""
    base = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
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
        # Each one stops by itself on SIGTERM: none is killed.
        assert await stop_all(procs) == [0, 0, 0]


async def test_high_places_before_low_within_a_round(stack: Client) -> None:
    """Asked in the same round for more than the host holds, the high-priority VM gets
    the host even though the low one asked first; the low one is refused."""
    client = stack
    # Rounds start at whole multiples of the period: ask right after one started, so
    # both requests are in the queues a whole period before the next.
    await asyncio.sleep(ROUND - time.time() % ROUND + 0.3)
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


async def test_idle_rounds_are_not_logged(stack: Client) -> None:
    """With nothing to do, neither scheduler writes a RoundCompleted: an idle pool logs
    nothing; a round with work is announced by both, high first."""
    client = stack
    started = [
        e.envelope
        async for e in client.bus.replay()
        if e.envelope is not None and e.envelope.type == "ServiceStarted"
    ]
    first = max(int(e.occurred_at.timestamp() // ROUND) for e in started) + 1
    # Only pacing: the rounds' numbers below show which rounds ran idle.
    await asyncio.sleep(2 * ROUND)

    async def ask() -> None:
        await client.send(PlaceVm(vm="busy", priority=Owner.HIGH, cpu=1, mem_mib=64))
        await client.send(PlaceVm(vm="busy-low", priority=Owner.LOW, cpu=1, mem_mib=64))

    rounds = await client.wait_for(
        lambda e: e.type == "RoundCompleted", count=2, before=ask, timeout=4 * ROUND
    )
    assert [e.data.priority for e in rounds] == ["high", "low"]  # type: ignore[attr-defined]
    assert not rounds[1].data.without_high  # type: ignore[attr-defined]
    # Rounds ``first`` to this one's were due while both ran; none of them had work.
    assert rounds[0].data.round >= first + 1  # type: ignore[attr-defined]
    logged = [
        e.envelope.id
        async for e in client.bus.replay()
        if e.envelope is not None and e.envelope.type == "RoundCompleted"
    ]
    assert logged == [e.id for e in rounds]
