"""RabbitMQ dropping a client's connection: the bus restores everything by itself.

The connection is closed by the broker (``rabbitmqctl close_connection``), not by
the client; aio-pika reconnects, and the bus resubscribes every stream follower
(the log index, watchers), durable queue consumer and query server, from where
each one was.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from schemas import Envelope, Message, Reply
from schemas.queries import HostList, ListHosts
from shared.bus import ConsumerSpec, Delivery, Logged, Stream
from shared.bus.rabbit import RabbitBus
from shared.testing import eventually, unique_namespace
from tests.brokers import close_and_delete, rabbitmqctl
from tests.contract.messages import create_vm, sample, vm_created

pytestmark = [pytest.mark.broker, pytest.mark.integration]


def drop_connections(client_name: str) -> int:
    """Close, from the broker's side, every connection that names itself ``client_name``."""
    pids = [
        line.split()[0]
        for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines()
        if f'"{client_name}"' in line
    ]
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: dropped connection")
    return len(pids)


def stream_consumers(queue: str) -> int:
    """The consumers the broker counts on a queue."""
    for line in rabbitmqctl("list_queues", "name", "consumers").splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    raise AssertionError(f"no queue {queue}")


def collect_broker_metrics_garbage() -> None:
    """RabbitMQ 3.10 counts a stream consumer of a channel that died with its
    connection until its periodic metrics collection (every 2 minutes) runs; run it now."""
    rabbitmqctl("eval", "rabbit_core_metrics_gc ! start_gc.")


@pytest.fixture
def client_name() -> str:
    return f"drop-test-{uuid.uuid4().hex}"


@pytest.fixture
async def bus(amqp_url: str, client_name: str) -> AsyncIterator[RabbitBus]:
    if not amqp_url.startswith("amqp://guest:guest@127.0.0.1:"):
        pytest.skip("dropping connections needs the local broker and rabbitmqctl")
    namespace = unique_namespace()
    adapter = RabbitBus(amqp_url, namespace, client_name=client_name)
    await adapter.start()
    try:
        yield adapter
    finally:
        await close_and_delete(adapter)


class Availability:
    """Every change of ``bus.available``, sampled often enough to see a reconnect."""

    def __init__(self, bus: RabbitBus) -> None:
        self.bus = bus
        self.changes = [bus.available]
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            if self.bus.available != self.changes[-1]:
                self.changes.append(self.bus.available)
            await asyncio.sleep(0.001)

    async def away_and_back(self, timeout: float) -> None:
        try:
            await eventually(
                lambda: self.changes[-2:] == [False, True],
                timeout=timeout,
                what="the bus away and back",
            )
        finally:
            self._task.cancel()


async def test_everything_comes_back_after_dropped_connections(
    bus: RabbitBus, client_name: str
) -> None:
    """After two dropped connections: the bus said it was away, then back; a watcher
    sees every event once, in order; a durable command consumer and a telemetry
    consumer get what was sent; queries are answered; and the broker counts as many
    consumers on the log stream as before."""
    started = time.monotonic()
    watched: list[Logged] = []
    commands: list[Envelope[Message]] = []
    samples: list[Envelope[Message]] = []

    async def on_event(entry: Logged) -> None:
        watched.append(entry)

    async def on_command(env: Envelope[Message], delivery: Delivery) -> None:
        commands.append(env)

    async def on_sample(env: Envelope[Message], delivery: Delivery) -> None:
        samples.append(env)

    async def on_query(env: Envelope[Message]) -> Reply:
        return HostList(hosts=[])

    await bus.watch(Stream.EVENTS, ("vm.>",), on_event)
    await bus.consume(ConsumerSpec("drop-cmds", Stream.COMMANDS, ("hosts.>",)), on_command)
    await bus.consume(ConsumerSpec("drop-tel", Stream.TELEMETRY, ("host.>",)), on_sample)
    await bus.serve("hosts", on_query)

    appended: list[Envelope[Message]] = []
    sent: list[Envelope[Message]] = []

    async def round_of_work(tag: str) -> None:
        """Events (single, batch, conditional), a command, a sample and a query."""
        single = vm_created(f"{tag}-single")
        batch = [vm_created(f"{tag}-b{i}") for i in range(3)]
        guarded = vm_created(f"{tag}-single")
        await bus.append(single)
        await bus.append_batch(batch)
        version = await bus.version(f"vm/{tag}-single")
        await bus.append(guarded, expected_version=version)
        appended.extend([single, *batch, guarded])
        command = create_vm(f"{tag}-cmd")
        await bus.send(command)
        sent.append(command)
        await bus.emit(sample(tick=len(sent)))
        reply = await bus.request(Envelope.wrap(ListHosts(), producer="test"), timeout=10)
        assert reply.data == HostList(hosts=[])
        await eventually(
            lambda: (
                len(watched) == len(appended)
                and len(commands) >= len(sent)
                and len(samples) >= len(sent)
            ),
            timeout=30,
            what=f"the work of round {tag}",
        )

    await round_of_work("before")
    log_consumers = await asyncio.to_thread(stream_consumers, bus.topology.log)
    for drop in range(2):
        availability = Availability(bus)
        assert await asyncio.to_thread(drop_connections, client_name) == 1
        await availability.away_and_back(timeout=30)
        await round_of_work(f"after{drop}")

    assert [e.envelope.id for e in watched if e.envelope] == [e.id for e in appended]
    assert len({e.seq for e in watched}) == len(watched)
    assert sorted(e.id for e in commands) == sorted(e.id for e in sent)
    assert len(samples) == len(sent)
    await asyncio.to_thread(collect_broker_metrics_garbage)
    await eventually_counted(bus.topology.log, log_consumers)
    # Readers that come and go (replays, dead-letter reads) leave no consumer behind.
    for _ in range(3):
        assert len([e async for e in bus.replay(filters=("vm.>",))]) == len(appended)
        assert await bus.dead_letters("drop-cmds") == []
    assert await asyncio.to_thread(stream_consumers, bus.topology.log) == log_consumers
    assert time.monotonic() - started < 60


async def eventually_counted(queue: str, expected: int) -> None:
    deadline = time.monotonic() + 20
    while (found := await asyncio.to_thread(stream_consumers, queue)) != expected:
        assert time.monotonic() < deadline, f"{queue}: {found} consumers, not {expected}"
        await asyncio.sleep(0.5)
