"""A scheduler killed in the middle of a round comes back from the log and places
nothing twice; maintenance empties a host; on real NATS and RabbitMQ servers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from schemas.pool import CapacityReserved, Owner
from schemas.queries import ListVms, VmList
from schemas.scheduling import PlaceVm, SetMaintenance
from schemas.transfers import MigrationCompleted
from schemas.vm import GuestWrites, MemoryMode
from services.scheduler.ledger import Ledger, evolve
from shared.capacity import differences, pool_from_log
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]

VMS = 150


def env_for(client: Client, bus_url: str, **extra: str) -> dict[str, str]:
    return {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "8",
        "VPLANE_ROUND_SECONDS": "1",
        "VPLANE_SPEED": "50",
        "VPLANE_PRIORITY": "high",
        **extra,
    }


async def log_of(client: Client, *types: str) -> list[object]:
    return [
        e.envelope.data
        async for e in client.bus.replay()
        if e.envelope is not None and e.envelope.type in types
    ]


async def ledger_of(client: Client) -> Ledger:
    ledger = Ledger()
    async for e in client.bus.replay(filters=("host.>", "pool.>")):
        if e.envelope is not None:
            ledger = evolve(ledger, e.seq, e.envelope.data)
    return ledger


async def test_scheduler_killed_mid_round_resumes_without_double_placements(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """Killed as soon as a round's first placement is in the log (its CreateVm commands
    going out): the log holds whole rounds only, and after a restart every VM is placed,
    reserved and created exactly once (what was not sent goes out from the outbox)."""
    env = env_for(client, bus_url)
    procs = await start_ready(client, [("hosts", env), ("scheduler", env)], tmp_path)
    try:
        for i in range(VMS):
            await client.send(PlaceVm(vm=f"vm{i}", priority=Owner.HIGH, cpu=1, mem_mib=256))
        [first] = await client.wait_for(lambda e: e.type == "VmPlaced", timeout=30)
        procs[1].kill()
        procs[1].wait(10)
        placed = await log_of(client, "VmPlaced")
        completed = {r.round: r.placed for r in await log_of(client, "RoundCompleted")}  # type: ignore[attr-defined]
        by_round = Counter(p.round for p in placed)  # type: ignore[attr-defined]
        assert first.data.round in by_round  # type: ignore[attr-defined]
        # A round lands whole: each one placed as many VMs as its RoundCompleted says.
        assert dict(by_round) == {r: n for r, n in completed.items() if n}

        procs.append((await start_ready(client, [("scheduler", env)], tmp_path))[0])
        await poll(
            lambda: log_of(client, "VmCreated"),
            lambda created: len(created) >= VMS,
            timeout=60,
            what=f"{VMS} VMs created",
        )
        placements = Counter(p.vm for p in await log_of(client, "VmPlaced"))  # type: ignore[attr-defined]
        creations = Counter(c.vm for c in await log_of(client, "VmCreated"))  # type: ignore[attr-defined]
        reservations = Counter(r.reservation for r in await log_of(client, "CapacityReserved"))  # type: ignore[attr-defined]
        expected = {f"vm{i}": 1 for i in range(VMS)}
        assert dict(placements) == expected
        assert dict(creations) == expected
        assert dict(reservations) == expected
        ledger = await ledger_of(client)
        for host in ledger.capacity:
            free = ledger.free(host)
            assert free.cpu_mhz >= 0, host
            assert free.mem_mib >= 0, host
    finally:
        await stop_all(procs)


async def test_maintenance_empties_a_host_through_migrations(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """Maintenance empties a host through the migration coordinator: the guests with real
    memory (half of them, writing as they run) arrive byte for byte as they were when
    stunned; the others move in modelled rounds."""
    env = env_for(client, bus_url, VPLANE_HOSTS="3", VPLANE_HA_FAILURES="0")
    procs = await start_ready(
        client, [("hosts", env), ("scheduler", env), ("migration", env)], tmp_path
    )
    try:
        for i in range(6):
            full = {"memory_mode": MemoryMode.FULL, "seed": i, "mem_mib": 128} if i % 2 else {}
            ask = {"vm": f"m{i}", "priority": Owner.HIGH, "cpu": 1, "mem_mib": 1024, **full}
            await client.send(
                PlaceVm.model_validate({**ask, "writes": GuestWrites(pages_per_s=2_000)})
            )
        await poll(
            lambda: log_of(client, "VmCreated"), lambda c: len(c) == 6, timeout=30, what="created"
        )
        [answer] = await client.send_and_wait(SetMaintenance(host="h1", on=True), timeout=30)
        assert answer.type == "MaintenanceStarted", answer
        await poll(
            lambda: log_of(client, "HostEvacuated"), lambda e: len(e) == 1, timeout=60, what="empty"
        )
        vms = await client.query(ListVms())
        assert isinstance(vms, VmList)
        assert len(vms.vms) == 6
        assert all(v.host != "h1" for v in vms.vms), vms.vms
        ledger = await poll(
            lambda: ledger_of(client),
            lambda led: not any(r.endswith(("-in", "-out")) for r in led.located),
            timeout=30,
            what="migration reservations released",
        )
        assert not ledger.reservations.get("h1")
        moved = await log_of(client, "MigrationCompleted")
        assert all(isinstance(m, MigrationCompleted) for m in moved)
        with_bytes = [m for m in moved if isinstance(m, MigrationCompleted) and int(m.vm[1:]) % 2]
        assert all(m.checksums_equal for m in with_bytes), with_bytes
        assert await log_of(client, "MigrationAborted") == []
        # Planned once, reserved once; and an independent replay of the log finds no
        # point over capacity, nothing counted twice, and the hosts running what it holds.
        taken = Counter(
            r.reservation
            for r in await log_of(client, "CapacityReserved")
            if isinstance(r, CapacityReserved) and r.purpose != "vm"
        )
        assert taken
        assert max(taken.values()) == 1, taken.most_common(3)
        pool = await pool_from_log(client.bus)
        assert (pool.over, pool.twice) == ([], [])
        assert differences(pool, vms.vms) == []
    finally:
        await stop_all(procs)
