"""Live migrations carried out by the running hosts service and migration coordinator,
and file copies by the hosts, on each broker; the room each VM and each migration needs
is reserved first, as a scheduler would."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from schemas import Command, Envelope, Message
from schemas.host import CrashHost, HostTelemetry
from schemas.memory import GetVmMemory, VmMemory
from schemas.queries import ListVms, VmList
from schemas.service import RejectionCode
from schemas.transfers import MigrationCompleted, StartCopy, StartMigration
from schemas.vm import CreateVm, GuestWrites, MemoryMode
from services.scheduler.state import incoming
from shared.bus import Logged, Stream
from shared.client import Client
from shared.testing import poll
from tests import reserving
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]

# Emulated seconds per wall second: a 64 MiB VM at 128 Mbit/s (4 emulated s) takes 0.5 s.
SPEED = 8
# The size of every VM these tests create.
CPU, MEM_MIB = 1, 64


def settings(client: Client, bus_url: str, **extra: str) -> dict[str, str]:
    return {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_SPEED": str(SPEED),
        "VPLANE_TICK_SECONDS": "0.2",
        **extra,
    }


@pytest.fixture
async def hosts(client: Client, bus_url: str, tmp_path: Path) -> AsyncIterator[Client]:
    env = settings(client, bus_url)
    procs = await start_ready(client, [("hosts", env), ("migration", env)], tmp_path)
    try:
        yield client
    finally:
        assert await stop_all(procs) == [0, 0]


ENDS = ("MigrationCompleted", "MigrationAborted", "CopyCompleted", "CopyAborted")


async def started_and_ended(
    client: Client, cmd: Command, *, timeout: float = 30
) -> tuple[Envelope[Message], Envelope[Message]]:
    """Send a StartMigration or StartCopy; return its Started event and how it ended (a
    migration's end comes from the coordinator, further down the same workflow)."""
    env = Envelope.wrap(cmd, producer="test")
    start, end = await client.wait_for(
        lambda e: e.correlation_id == env.id and (e.causation_id == env.id or e.type in ENDS),
        count=2,
        timeout=timeout,
        before=lambda: client.bus.send(env),
    )
    return start, end


async def until_known(client: Client, host: str, other: str) -> None:
    """A host of another process reaches this process's fold through the log a moment
    after it registered: ask for a tiny copy to it until it is not refused as unknown."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        probe = StartCopy(
            host=host,
            target=other,
            rate_mbps=1000,
            copy_id=f"probe-{uuid.uuid4().hex[:8]}",
            size_mib=1,
        )
        [first] = await client.send_and_wait(probe, timeout=15)
        code = getattr(first.data, "code", None)
        if code != RejectionCode.UNKNOWN_HOST:
            assert first.type == "CopyStarted", first.data
            return
        assert asyncio.get_running_loop().time() < deadline, f"{host}'s process never saw {other}"
        await asyncio.sleep(0.1)


async def create(client: Client, vm: str, host: str, **extra: object) -> None:
    """Create a VM of CPU vCPUs and MEM_MIB in room reserved for it on ``host``."""
    cmd = CreateVm.model_validate({"vm": vm, "cpu": CPU, "mem_mib": MEM_MIB, "host": host, **extra})
    created = await reserving.create(client, cmd, timeout=30)
    assert created.type == "VmCreated", created.data


async def room_on_target(client: Client, cmd: StartMigration) -> StartMigration:
    """Reserve room on the target for the migrating VM (one made by ``create``), as the
    scheduler does before it sends ``cmd``: the target takes in nothing unreserved."""
    arriving = reserving.reservation(
        cmd.vm, cmd.target, CPU, MEM_MIB, name=incoming(cmd.migration), purpose="migration"
    )
    await reserving.reserve(client.bus, arriving)
    return cmd


async def placement(client: Client) -> dict[str, str]:
    reply = await client.query(ListVms())
    assert isinstance(reply, VmList)
    return {v.vm: v.host for v in reply.vms}


async def placed(client: Client, expected: dict[str, str]) -> dict[str, str]:
    """Where the VMs are once the hosts have folded a move: the process that answers
    follows the coordinator's MigrationCompleted a moment after it is appended."""
    return await poll(lambda: placement(client), lambda seen: seen == expected, what="the move")


async def checksum(client: Client, vm: str) -> str | None:
    reply = await client.query(GetVmMemory(vm=vm))
    assert isinstance(reply, VmMemory)
    return reply.checksum


async def test_a_running_guest_moves_in_rounds_and_arrives_as_it_was_at_the_stun(
    hosts: Client,
) -> None:
    """The guest keeps writing while its pages cross in rounds; the last round goes with
    it stunned, and the target's memory is then the source's at the stun, byte for byte
    (each host computed its own checksum)."""
    client = hosts
    writes = GuestWrites(pages_per_s=2_000, hot_fraction=0.5)
    await create(client, "web", "h1", memory_mode=MemoryMode.FULL, seed=5, writes=writes)
    cmd = StartMigration(host="h1", target="h2", rate_mbps=128, migration="m1", vm="web")
    start, end = await started_and_ended(client, await room_on_target(client, cmd))
    assert (start.type, end.type) == ("MigrationStarted", "MigrationCompleted"), end.data
    done = end.data
    assert isinstance(done, MigrationCompleted)
    assert end.producer == "migration-coordinator"
    assert done.rounds >= 2
    assert done.checksums_equal is True
    [stunned] = await logged(client, "VmStunned")
    imported = await logged(client, "PagesImported")
    assert stunned.data.checksum == imported[-1].data.checksum == done.checksum_on_target  # type: ignore[attr-defined]
    await placed(client, {"web": "h2"})


async def test_a_vm_that_is_off_moves_in_one_round_unchanged(hosts: Client) -> None:
    client = hosts
    await create(client, "cold", "h1", memory_mode=MemoryMode.FULL, power_on=False, seed=5)
    before = await checksum(client, "cold")
    cmd = StartMigration(host="h1", target="h2", rate_mbps=128, migration="m1", vm="cold")
    _, end = await started_and_ended(client, await room_on_target(client, cmd))
    done = end.data
    assert isinstance(done, MigrationCompleted), done
    assert (done.rounds, done.downtime_ms, done.checksum_on_target) == (1, 0.0, before)
    await placed(client, {"cold": "h2"})
    assert await checksum(client, "cold") == before


async def test_a_copy_completes_after_its_time(hosts: Client) -> None:
    """CopyStarted, then CopyCompleted once size * 8 / rate emulated seconds have passed."""
    start, end = await started_and_ended(
        hosts, StartCopy(host="h1", target="h2", rate_mbps=100, copy_id="c1", size_mib=50)
    )
    assert (start.type, end.type) == ("CopyStarted", "CopyCompleted")
    assert start.subject == end.subject == "copy/c1"
    assert (end.occurred_at - start.occurred_at).total_seconds() >= 4.0 / SPEED


async def crash_aborts(
    client: Client, source: str, target: str, *, memory: bool = True
) -> Envelope[Message]:
    """Start a slow migration of a new VM (off: its memory stays as it is) from
    ``source``, crash ``target`` once a round is on its way, and return how the migration
    ended."""
    await create(client, "db", source, memory_mode=MemoryMode.FULL, power_on=False, seed=9)
    # (A memory query reaches any one hosts process: with several, maybe not the VM's.)
    before = await checksum(client, "db") if memory else None
    # 64 emulated seconds: far longer than the test, were it not aborted.
    cmd = StartMigration(host=source, target=target, rate_mbps=8, migration="slow", vm="db")
    env = Envelope.wrap(await room_on_target(client, cmd), producer="test")
    await client.wait_for(
        lambda e: e.correlation_id == env.id and e.type == "MigrationRoundSent",
        timeout=15,
        before=lambda: client.bus.send(env),
    )

    async def crash() -> None:
        await client.send(CrashHost(host=target))

    [ended] = await client.wait_for(
        lambda e: e.correlation_id == env.id and e.type in ENDS, timeout=15, before=crash
    )
    if memory:
        assert await checksum(client, "db") == before
    return ended


async def test_a_migration_whose_target_crashes_is_aborted(hosts: Client) -> None:
    """A target crash while a migration is in flight ends it aborted, naming the target;
    the VM stays on its source with its memory as it was."""
    aborted = await crash_aborts(hosts, "h1", "h2")
    assert aborted.type == "MigrationAborted"
    assert "target host h2 crashed" in aborted.data.reason  # type: ignore[attr-defined]
    assert await placement(hosts) == {"db": "h1"}


async def logged(client: Client, kind: str) -> list[Envelope[Message]]:
    return [
        entry.envelope
        async for entry in client.bus.replay()
        if entry.envelope is not None and entry.envelope.type == kind
    ]


async def test_a_coordinator_killed_mid_migration_finishes_it_once_after_restart(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """SIGKILL the coordinator while a running VM's memory is crossing: the restarted
    coordinator finds the migration in the log and ends it, once; the VM is then on
    exactly one host."""
    env = settings(client, bus_url)
    [hosts] = await start_ready(client, [("hosts", env)], tmp_path)
    [first] = await start_ready(client, [("migration", env)], tmp_path)
    try:
        writes = GuestWrites(pages_per_s=500)
        await create(client, "app", "h1", memory_mode=MemoryMode.FULL, seed=2, writes=writes)
        # 16 emulated seconds a round 0: 2 s of wall time, more than the kill takes.
        cmd = StartMigration(host="h1", target="h2", rate_mbps=32, migration="m3", vm="app")
        start = Envelope.wrap(await room_on_target(client, cmd), producer="test")
        await client.wait_for(
            lambda e: e.correlation_id == start.id and e.type == "MigrationRoundSent",
            timeout=15,
            before=lambda: client.bus.send(start),
        )
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        second = await start_ready(client, [("migration", env)], tmp_path)
        try:
            ended = await poll(
                lambda: logged(client, "MigrationCompleted"),
                bool,
                timeout=30,
                what="the migration completed after the restart",
            )
        finally:
            assert await stop_all(second) == [0]
    finally:
        assert await stop_all([hosts]) == [0]
    [completed] = ended
    assert completed.data.checksums_equal is True  # type: ignore[attr-defined]
    assert await logged(client, "MigrationAborted") == []
    assert len(await logged(client, "MigrationRoundDone")) == len(
        {e.data.figures.round for e in await logged(client, "MigrationRoundDone")}  # type: ignore[attr-defined]
    )


async def next_sample(
    client: Client, host: str, ok: Callable[[HostTelemetry], bool]
) -> HostTelemetry:
    """The first telemetry sample of ``host`` from now on that satisfies ``ok``."""
    found: asyncio.Future[HostTelemetry] = asyncio.get_running_loop().create_future()

    async def on_sample(entry: Logged) -> None:
        data = entry.envelope.data if entry.envelope is not None else None
        if isinstance(data, HostTelemetry) and ok(data) and not found.done():
            found.set_result(data)

    sub = await client.bus.watch(Stream.TELEMETRY, (f"host.{host}",), on_sample)
    try:
        return await asyncio.wait_for(found, 15)
    finally:
        await sub.stop()


async def test_a_migration_between_two_hosts_processes(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """With the target in another hosts process the guest's pages cross between the two
    processes into the target's shell, and the target's process reports the VM in its
    telemetry; a crash of that target, handled by its own process, aborts a migration in
    flight from the other."""
    base = settings(client, bus_url, VPLANE_HOSTS="1")
    procs = await start_ready(
        client,
        [
            *(("hosts", {**base, "VPLANE_HOST_PREFIX": p}) for p in ("a", "b")),
            ("migration", base),
        ],
        tmp_path,
    )
    try:
        await create(client, "web", "a1", memory_mode=MemoryMode.FULL, seed=4)
        await until_known(client, "a1", "b1")
        cmd = StartMigration(host="a1", target="b1", rate_mbps=128, migration="m1", vm="web")
        _, end = await started_and_ended(client, await room_on_target(client, cmd))
        assert end.type == "MigrationCompleted", end.data
        assert end.data.checksums_equal is True  # type: ignore[attr-defined]
        sample = await next_sample(client, "b1", lambda t: bool(t.vms))
        assert [v.vm for v in sample.vms] == ["web"]

        aborted = await crash_aborts(client, "a1", "b1", memory=False)
        assert (aborted.type, aborted.producer) == ("MigrationAborted", "migration-coordinator")
        assert "target host b1 crashed" in aborted.data.reason  # type: ignore[attr-defined]
    finally:
        assert await stop_all(procs) == [0, 0, 0]
