"""A NatsBus outlives its broker: nats-server killed (SIGKILL, as in a crash) and started
again on the same port and store; followers, consumers, query servers and streams come
back by themselves, without the process restarting."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import Envelope, Message, Reply
from schemas.queries import HostList, ListHosts
from schemas.transfers import StartMigration
from schemas.vm import CreateVm, GuestWrites, MemoryMode
from shared.broker import BrokerError, EmbeddedNats
from shared.bus import BusError, ConsumerSpec, Delivery, Logged, Stream
from shared.bus.nats import NatsBus
from shared.client import Client
from shared.testing import eventually, poll, unique_namespace
from tests.contract.messages import create_vm, sample, vm_created
from tests.integration.stack import start_ready, stop_all
from tests.integration.test_hosts_migrations import room_on_target
from tests.integration.test_rabbitmq_restart import retry_until_answered
from tests.reserving import create

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


class CrashableNats(EmbeddedNats):
    """A nats-server that can be killed without a chance to shut down cleanly."""

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        assert proc is not None, "the server is not running"
        proc.kill()
        proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CrashableNats]:
    try:
        nats_server = CrashableNats(tmp_path / "nats")
        nats_server.start()
    except BrokerError as err:
        pytest.skip(f"no NATS server: {err}")
    try:
        yield nats_server
    finally:
        nats_server.stop()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop would have reported: exceptions never retrieved and the like."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)


@pytest.fixture
async def bus(server: CrashableNats, loop_errors: list[dict[str, Any]]) -> AsyncIterator[NatsBus]:
    nats_bus = NatsBus(server.url, unique_namespace(), connect_timeout=10)
    await nats_bus.start()
    try:
        yield nats_bus
    finally:
        await nats_bus.close()
    assert_nothing_unretrieved(loop_errors)


async def crash_and_restart(server: CrashableNats, bus: NatsBus) -> None:
    server.kill()
    await eventually(lambda: not bus.available, timeout=10, what="the bus to notice")
    await asyncio.to_thread(server.start)
    await eventually(lambda: bus.available, timeout=30, what="the bus to reconnect")


async def append(bus: NatsBus, env: Envelope[Any]) -> None:
    """Append until the broker confirms; an append cut by the outage is sent again, and
    the log stores it once (its id is the dedupe id)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            await bus.append(env)
        except BusError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


def assert_nothing_unretrieved(loop_errors: list[dict[str, Any]]) -> None:
    gc.collect()
    assert [f"{c.get('message')}: {c.get('exception')!r}" for c in loop_errors] == []


def ends_with(followed: list[Logged], env: Envelope[Any]) -> bool:
    return (
        bool(followed) and followed[-1].envelope is not None and followed[-1].envelope.id == env.id
    )


async def test_bus_restores_followers_consumers_servers_and_streams_after_a_crash(
    server: CrashableNats, bus: NatsBus, loop_errors: list[dict[str, Any]]
) -> None:
    """After the broker is killed and started again, with no restart of the process: the
    follower sees every event once with no gap, a command delivered but not acknowledged
    before the crash is delivered again, new commands and telemetry are consumed (the
    TELEMETRY stream, in memory, and its durable are made again), queries are answered,
    and nothing acknowledged before the crash comes again."""
    followed: list[Logged] = []

    async def follow(entry: Logged) -> None:
        followed.append(entry)

    handled: list[tuple[str, int]] = []
    in_handler = asyncio.Event()
    crashed = asyncio.Event()

    async def on_command(env: Envelope[Message], delivery: Delivery) -> None:
        vm: str = env.data.vm  # type: ignore[attr-defined]
        if vm == "before" and delivery.attempt == 1:
            in_handler.set()
            # Bounded, so that a test failing before the crash still stops its consumer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(crashed.wait(), 30)
            raise RuntimeError("the broker went away while this was handled")
        handled.append((vm, delivery.attempt))

    ticks: list[int] = []

    async def on_sample(env: Envelope[Message], delivery: Delivery) -> None:
        ticks.append(env.data.tick)  # type: ignore[attr-defined]

    async def on_query(env: Envelope[Message]) -> Reply:
        return HostList(hosts=[])

    await bus.watch(Stream.EVENTS, (), follow)
    commands = ConsumerSpec("commands", Stream.COMMANDS, (">",), ack_wait=5.0, retry_delay=0.1)
    await bus.consume(commands, on_command)
    await bus.consume(ConsumerSpec("telemetry", Stream.TELEMETRY, (">",)), on_sample)
    await bus.serve("hosts", on_query)

    before = [vm_created(f"before{i}") for i in range(3)]
    for env in before:
        await bus.append(env)
    await bus.emit(sample(tick=0))
    await bus.send(create_vm("early"))
    await eventually(lambda: handled == [("early", 1)], what="the command sent first")
    await bus.send(create_vm("before"))
    await eventually(lambda: len(followed) == 3, what="the events appended before the crash")
    await eventually(lambda: ticks == [0], what="the sample emitted before the crash")
    await asyncio.wait_for(in_handler.wait(), 10)

    server.kill()
    await eventually(lambda: not bus.available, timeout=10, what="the bus to notice")
    await bus.emit(sample(tick=1000))  # dropped while the broker is away, and counted
    crashed.set()
    await asyncio.to_thread(server.start)
    await eventually(lambda: bus.available, timeout=30, what="the bus to reconnect")

    after = [vm_created(f"after{i}") for i in range(3)]
    for env in after:
        await append(bus, env)
    await bus.send(create_vm("after"))
    await eventually(lambda: len(followed) >= 6, timeout=20, what="the events appended after")
    await eventually(
        lambda: {vm for vm, _ in handled} == {"early", "before", "after"},
        timeout=20,
        what="the command cut by the crash and the one sent after",
    )
    assert dict(handled)["before"] >= 2, "the interrupted command was not delivered again"
    assert [vm for vm, _ in handled].count("early") == 1, "an acknowledged command came again"

    # Telemetry is dropped while the broker (or its stream) is away, by design: emit
    # until a sample gets through to the consumer of the TELEMETRY stream made again.
    tick = 0
    while not any(0 < t < 1000 for t in ticks):
        tick += 1
        assert tick < 100, "no telemetry reached the consumer after the restart"
        await bus.emit(sample(tick=tick))
        await asyncio.sleep(0.1)

    assert 1000 not in ticks

    reply = await bus.request(Envelope.wrap(ListHosts(), producer="test"), timeout=10)
    assert reply.data == HostList(hosts=[])

    last = vm_created("last")
    await append(bus, last)
    await eventually(lambda: ends_with(followed, last), timeout=20, what="the last event")
    logged = [e.envelope.id async for e in bus.replay() if e.envelope is not None]
    assert [e.envelope.id for e in followed if e.envelope is not None] == logged
    assert logged == [e.id for e in [*before, *after, last]]
    assert bus.available
    assert_nothing_unretrieved(loop_errors)


@pytest.mark.parametrize("outage", ["crash", "dropped connection"])
async def test_follower_sees_every_event_once_across_two_outages_under_load(
    server: CrashableNats, bus: NatsBus, loop_errors: list[dict[str, Any]], outage: str
) -> None:
    """Appends keep coming while the broker is killed twice (or the connection to it
    drops twice, the broker staying up): the follower sees each of the 200 events
    exactly once, in order."""
    followed: list[Logged] = []

    async def follow(entry: Logged) -> None:
        followed.append(entry)

    await bus.watch(Stream.EVENTS, (), follow)
    envs = [vm_created(f"vm{i}") for i in range(200)]
    stored = 0

    async def produce() -> None:
        nonlocal stored
        for env in envs:
            await append(bus, env)
            stored += 1
            await asyncio.sleep(0.01)

    def reached(count: int) -> Callable[[], bool]:
        return lambda: stored >= count

    producer = asyncio.create_task(produce())
    try:
        for at in (60, 130):
            await eventually(reached(at), timeout=30, what=f"{at} appends")
            if outage == "crash":
                await crash_and_restart(server, bus)
            else:
                await bus.nc.force_reconnect()
        await asyncio.wait_for(producer, 40)
    finally:
        producer.cancel()
    last = vm_created("last")
    await append(bus, last)
    await eventually(lambda: ends_with(followed, last), timeout=20, what="the last event")
    ids = [e.envelope.id for e in followed if e.envelope is not None]
    assert ids == [e.id for e in [*envs, last]]
    seqs = [e.seq for e in followed]
    assert seqs == sorted(set(seqs))
    assert_nothing_unretrieved(loop_errors)


async def test_bus_closes_promptly_while_the_broker_is_down(
    server: CrashableNats, bus: NatsBus, loop_errors: list[dict[str, Any]]
) -> None:
    """A process stopping while its broker is away closes its bus at once, leaving no
    exception unretrieved and no task pending behind (what it buffered meanwhile
    cannot be written to the dead connection)."""

    async def ignore(env: Envelope[Message], delivery: Delivery) -> None:
        pass

    async def follow(entry: Logged) -> None:
        pass

    async def on_query(env: Envelope[Message]) -> Reply:
        return HostList(hosts=[])

    await bus.watch(Stream.EVENTS, (), follow)
    await bus.consume(ConsumerSpec("commands", Stream.COMMANDS, (">",)), ignore)
    await bus.consume(ConsumerSpec("telemetry", Stream.TELEMETRY, (">",)), ignore)
    await bus.serve("hosts", on_query)
    for tick in range(20):
        await bus.emit(sample(tick=tick))
    server.kill()
    await eventually(lambda: not bus.available, timeout=10, what="the bus to notice")
    await bus.emit(sample(tick=20))
    with pytest.raises(BusError):
        await bus.request(Envelope.wrap(ListHosts(), producer="test"), timeout=0.5)
    await asyncio.wait_for(bus.close(), 10)
    assert_nothing_unretrieved(loop_errors)


@pytest.mark.integration
async def test_hosts_service_carries_on_after_the_broker_is_killed(
    server: CrashableNats, bus: NatsBus, tmp_path: Path
) -> None:
    """The hosts service, a process of its own, lives through nats-server killed and
    started again: it answers commands (each creating a VM in room reserved for it, as
    its scheduler would) and publishes telemetry without a restart, and reports no
    exception left unretrieved."""
    client = Client(bus, producer="test")
    env = {
        "VPLANE_BUS_URL": server.url,
        "VPLANE_NAMESPACE": bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.2",
    }
    [service] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        made = await create(client, CreateVm(vm="before", cpu=1, mem_mib=64, host="h1"), timeout=20)
        assert made.type == "VmCreated", made.data
        await crash_and_restart(server, bus)
        answer = await retry_until_answered(
            client, CreateVm(vm="after", cpu=1, mem_mib=64, host="h2")
        )
        assert answer == "VmCreated"

        samples: list[Logged] = []

        async def on_sample(entry: Logged) -> None:
            samples.append(entry)

        await bus.watch(Stream.TELEMETRY, (), on_sample)
        await eventually(lambda: len(samples) > 0, timeout=20, what="telemetry after the restart")
        assert service.poll() is None, "the hosts service died with the broker"
    finally:
        service.terminate()
        service.wait(15)
    log = (tmp_path / "hosts-0.log").read_text()
    assert "never retrieved" not in log
    assert "reconnected to nats" in log


async def test_starting_a_running_server_again_leaves_it_alone(tmp_path: Path) -> None:
    """``with EmbeddedNats(d).start()`` starts it once: a second server on the same store
    would open the store before failing to bind the port, and break the first one's."""
    server = EmbeddedNats(tmp_path)
    with server.start() as again:
        assert again is server
        first = server._proc
        server.start()
        assert server._proc is first
        bus = NatsBus(server.url, unique_namespace())
        await bus.start()
        try:
            await bus.append(vm_created("after"))
            assert await bus.last_seq() == 1
        finally:
            await bus.close()
    assert "address already in use" not in (tmp_path / "nats-server.log").read_text()


@pytest.mark.integration
@pytest.mark.timeout(120)
async def test_a_live_migration_lives_through_the_broker_killed_mid_round(
    server: CrashableNats, bus: NatsBus, tmp_path: Path
) -> None:
    """nats-server killed while a running guest's pages cross, and started again: the
    hosts and the coordinator carry on without a restart, and the migration completes
    once, the target's memory the source's at the stun."""
    client = Client(bus, producer="test")
    env = {
        "VPLANE_BUS_URL": server.url,
        "VPLANE_NAMESPACE": bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_SPEED": "8",
    }
    procs = await start_ready(client, [("hosts", env), ("migration", env)], tmp_path)
    try:
        writes = GuestWrites(pages_per_s=500)
        vm = CreateVm(
            vm="db", cpu=1, mem_mib=64, host="h1", memory_mode=MemoryMode.FULL, writes=writes
        )
        made = await create(client, vm, timeout=20)
        assert made.type == "VmCreated", made.data
        # Round 0: 64 MiB at 16 Mbit/s, 34 emulated seconds, 4 s of wall time.
        cmd = StartMigration(host="h1", target="h2", rate_mbps=16, migration="m1", vm="db")
        start = Envelope.wrap(await room_on_target(client, cmd), producer="test")
        await client.wait_for(
            lambda e: e.correlation_id == start.id and e.type == "MigrationRoundSent",
            timeout=20,
            before=lambda: bus.send(start),
        )
        await crash_and_restart(server, bus)

        async def ended() -> list[Envelope[Message]]:
            return [
                e.envelope
                async for e in bus.replay()
                if e.envelope is not None
                and e.envelope.type in ("MigrationCompleted", "MigrationAborted")
            ]

        found = await poll(ended, bool, timeout=60, what="the migration's end")
        assert [e.type for e in found] == ["MigrationCompleted"], [e.data for e in found]
        assert found[0].data.checksums_equal is True  # type: ignore[attr-defined]
        assert all(p.poll() is None for p in procs), "a service died with the broker"
    finally:
        assert await stop_all(procs) == [0, 0]


@pytest.mark.integration
@pytest.mark.timeout(150)
async def test_the_page_sharing_daemon_lives_through_the_broker_killed_mid_scan(
    server: CrashableNats, bus: NatsBus, tmp_path: Path
) -> None:
    """nats-server killed during the daemon's first pass over the host, and started
    again: the daemon and the hosts carry on without a restart (their consumers, query
    servers and followers restored), and every duplicate page ends up shared once."""
    from tests.integration.test_sharing import GUESTS, h1, members, saved
    from tests.integration.test_sharing import create as create_guest
    from tests.unit.sharing.test_service import _expected

    client = Client(bus, producer="test")
    env = {
        "VPLANE_BUS_URL": server.url,
        "VPLANE_NAMESPACE": bus.namespace,
        "VPLANE_HOSTS": "1",
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_SPEED": "5",
        "VPLANE_SHARING_PAGES_PER_SECOND": "4000",
    }
    procs = await start_ready(client, [("hosts", env), ("sharing", env)], tmp_path)
    try:
        for name, seed, template in GUESTS:
            await create_guest(client, name, seed, template)
        # Mid-way through the first pass over 24,576 pages at 20,000 a wall second.
        await asyncio.sleep(0.6)
        await crash_and_restart(server, bus)
        expected = _expected(GUESTS)
        await poll(lambda: h1(client), lambda h: saved(h, expected), timeout=90, what="saved")
        assert all(p.poll() is None for p in procs), "a service died with the broker"
    finally:
        assert await stop_all(procs) == [0, 0]
    shared = [
        e.envelope async for e in bus.replay() if e.envelope and e.envelope.type == "PagesShared"
    ]
    pairs = members(shared)
    assert len(pairs) == len(set(pairs)) == expected
