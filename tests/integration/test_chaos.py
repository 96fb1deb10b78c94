"""Chaos: under a load of placements, schedulers and the hosts process are killed with
SIGKILL again and again, and the broker fails (a nats-server killed and started again,
RabbitMQ connections closed by the broker, a JetStream cluster node killed); then the
log alone must show every request answered once, nothing lost, nothing doubled, no host
over capacity, every durable consumer drained, and the tenants service and contention
monitor still reacting to telemetry."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import nats.errors
import pytest

from schemas import Envelope
from schemas.scheduling import PlaceVm
from schemas.tenants import CreateCluster
from shared.broker import BrokerError
from shared.bus import BusError
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.client import Client
from shared.testing import poll, unique_namespace
from tests.brokers import SERVICE_CONSUMERS, drop_rabbitmq_namespace
from tests.integration import chaos_audit as audit
from tests.integration.chaos import (
    ROLES,
    Stack,
    placements,
    run_faults,
    send_load,
    send_surely,
    stack_env,
    wait_all_started,
)
from tests.integration.chaos_brokers import (
    CrashableNats,
    drop_connections,
    nats_cluster,
    queue_depths,
    start_cluster,
)
from tests.integration.stack import noisy_neighbour

pytestmark = [
    pytest.mark.broker,
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.timeout(300),
]

PLACEMENTS = 300
LOAD_SECONDS = 40.0
CLUSTER = "batch"
WORKERS = 4

REPLICATED = ("EVENTS", "COMMANDS", "TELEMETRY", "DATA", "DEADLETTERS")
Backlog = Callable[[], Awaitable[dict[str, int]]]


async def run_chaos(
    client: Client, stack: Stack, broker_fault: Callable[[], Awaitable[None]], backlog: Backlog
) -> dict[str, float]:
    """The whole scenario; returns how long each phase took."""
    timings: dict[str, float] = {}
    began = time.monotonic()
    await stack.start()
    await send_surely(
        client,
        Envelope.wrap(
            CreateCluster(
                cluster=CLUSTER, workers=WORKERS, min_workers=1, max_workers=WORKERS, worker_cpu=4
            ),
            producer="chaos",
        ),
    )
    log = await log_until(
        client,
        lambda log: len(workers_created(log)) == WORKERS,
        timeout=60,
        what="the tenant cluster's workers",
    )
    timings["start"] = time.monotonic() - began

    began = time.monotonic()
    # The load keeps off the workers' hosts: hadoop workers and a full host of steady VMs
    # contend by themselves, and the cluster would be at its minimum before the faults end.
    sent = placements(PLACEMENTS, avoid=sorted(set(workers_created(log).values())))

    def kill(role: str) -> Callable[[], Awaitable[None]]:
        async def fault() -> None:
            stack.kill(role)

        return fault

    faults = [
        ("kill scheduler-high", kill("scheduler-high")),
        ("broker fault", broker_fault),
        ("kill hosts", kill("hosts")),
        ("kill scheduler-low", kill("scheduler-low")),
        ("broker fault", broker_fault),
        ("kill scheduler-high", kill("scheduler-high")),
        ("kill hosts", kill("hosts")),
    ]
    done: list[str] = []
    await asyncio.gather(
        send_load(client, sent, LOAD_SECONDS),
        run_faults(faults, LOAD_SECONDS / (len(faults) + 1), done),
    )
    assert len(done) == len(faults), done
    timings["load and faults"] = time.monotonic() - began

    began = time.monotonic()
    await wait_all_started(client, stack)
    await log_until(
        client,
        lambda log: settled(log, sent),
        timeout=90,
        what="every placement answered and every VM placed created",
    )
    timings["settle"] = time.monotonic() - began
    assert stack.exited() == {}, "services ended on their own"

    began = time.monotonic()
    await still_reacts_to_telemetry(client)
    timings["contention"] = time.monotonic() - began

    began = time.monotonic()
    # Telemetry comes from the hosts: without them, its consumers can drain.
    await stack.stop("hosts")
    await poll(backlog, lambda b: not any(b.values()), timeout=60, what="every consumer drained")
    timings["drain"] = time.monotonic() - began

    log = await log_until(client, lambda _: True, timeout=30, what="the log")
    audit.assert_every_request_answered_once(log, sent)
    audit.assert_nothing_lost(log)
    audit.assert_no_host_over_capacity(log)
    raw = (
        await audit.raw_nats_ids(client.bus.url, client.bus.namespace)
        if isinstance(client.bus, NatsBus)
        else None
    )
    audit.assert_nothing_doubled(log, raw)
    back = audit.clock_regressions(log)
    assert "hosts" not in back, f"the hosts' emulated time went back: {back['hosts'][:5]}"
    outcome = Counter(e.type for _, e in log.entries)
    buried = {c: len(await client.bus.dead_letters(c)) for c in SERVICE_CONSUMERS}
    print(
        f"faults: {done}; timings: { {k: round(v, 1) for k, v in timings.items()} }; "
        f"placed {outcome['VmPlaced']}, refused {outcome['CommandRejected']}, "
        f"created {outcome['VmCreated']}, events {len(log.entries)}; "
        f"emulated time went back: { {p: len(b) for p, b in back.items()} }; "
        f"restarted after failing to start: {stack.failed_starts}; "
        f"dead letters: { {c: n for c, n in buried.items() if n} }"
    )
    return timings


async def log_until(
    client: Client, ok: Callable[[audit.LogView], bool], *, timeout: float, what: str
) -> audit.LogView:
    """Read the log until ``ok`` holds; on a timeout, say what the log held by type. A read
    cut by the broker (a node down, a leader being elected) is tried again."""
    deadline = time.monotonic() + timeout
    log = audit.LogView([])
    while True:
        try:
            log = await audit.read_log(client.bus)
        except BusError:
            pass
        else:
            if ok(log):
                return log
        if time.monotonic() > deadline:
            held = Counter(env.type for _, env in log.entries)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; log: {held}")
        await asyncio.sleep(0.5)


def workers_created(log: audit.LogView) -> dict[str, str]:
    return {c.vm: c.host for c in log.data("VmCreated") if c.vm.startswith(f"{CLUSTER}-")}


def settled(log: audit.LogView, sent: list[Envelope[PlaceVm]]) -> bool:
    placed = {p.vm for p in log.data("VmPlaced")}
    refused = {r.command_id for r in log.data("CommandRejected")}
    answered = all(env.data.vm in placed or env.id in refused for env in sent)
    created = {c.vm for c in log.data("VmCreated")}
    return answered and placed <= created


async def still_reacts_to_telemetry(client: Client) -> None:
    """After the faults, a noisy VM placed beside the cluster's workers makes the monitor
    see contention on that host (a new episode) and scale the cluster down (a new
    decision)."""
    log = await log_until(client, lambda _: True, timeout=30, what="the log")
    host, _ = Counter(workers_created(log).values()).most_common(1)[0]

    def on_host(log: audit.LogView, kind: str) -> int:
        return len([d for d in log.data(kind) if d.host == host])

    detected, decided = on_host(log, "ContentionDetected"), on_host(log, "ScalingDecided")
    # Placed by the low scheduler on that host, which the load was kept off.
    await send_surely(client, Envelope.wrap(noisy_neighbour(host), producer="chaos"))
    await log_until(
        client,
        lambda log: any(c.vm == "noisy" and c.host == host for c in log.data("VmCreated")),
        timeout=60,
        what=f"the noisy VM created on {host}",
    )
    await log_until(
        client,
        lambda log: (
            on_host(log, "ContentionDetected") > detected
            and on_host(log, "ScalingDecided") > decided
        ),
        timeout=60,
        what=f"contention detected on {host} and the cluster scaled",
    )

    def shrunk(log: audit.LogView) -> bool:
        """The tenants service took workers away and the hosts destroyed them: nothing of
        the episode is still on its way when the hosts stop."""
        scaled = [s for s in log.data("ClusterScaled") if s.reason.startswith("contention")]
        removed = {vm for s in scaled for vm in s.removed}
        destroyed = {d.vm for d in log.data("VmDestroyed")}
        return bool(removed) and removed <= destroyed

    await log_until(client, shrunk, timeout=60, what="the workers taken away destroyed")


# --- the three variants -----------------------------------------------------------


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[CrashableNats]:
    server = CrashableNats(tmp_path / "nats")
    try:
        server.start()
    except BrokerError as err:
        pytest.skip(f"no NATS server: {err}")
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def chaos_client(bus: NatsBus | RabbitBus) -> AsyncIterator[Client]:
    await bus.start()
    try:
        yield Client(bus, producer="chaos")
    finally:
        await bus.close()


async def test_chaos_on_nats_with_the_broker_killed(
    nats_server: CrashableNats, tmp_path: Path
) -> None:
    """kill -9 of the schedulers (3), the hosts process (2) and nats-server itself (2,
    started again on the same port and store) under 300 placements."""
    namespace = unique_namespace()

    async def kill_broker() -> None:
        nats_server.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats_server.start)

    async def backlog() -> dict[str, int]:
        found = await audit.nats_backlog(nats_server.url, namespace)
        return {name: pending + unacked for name, (pending, unacked) in found.items()}

    async with chaos_client(NatsBus(nats_server.url, namespace, connect_timeout=10)) as client:
        stack = Stack(client, stack_env(nats_server.url, namespace), tmp_path)
        try:
            await run_chaos(client, stack, kill_broker, backlog)
        finally:
            await stack.stop()


async def test_chaos_on_rabbitmq_with_connections_dropped(amqp_url: str, tmp_path: Path) -> None:
    """kill -9 of the schedulers (3) and the hosts process (2), and every service's
    connection closed by RabbitMQ (2), under 300 placements."""
    if not amqp_url.startswith("amqp://guest:guest@127.0.0.1:") or not shutil.which("rabbitmqctl"):
        pytest.skip("dropping connections needs the local broker and rabbitmqctl")
    namespace = unique_namespace()
    port = urlsplit(amqp_url).port or 5672
    stack: Stack | None = None

    async def drop() -> None:
        assert stack is not None
        closed = await asyncio.to_thread(drop_connections, stack.pids(), set(ROLES), port)
        assert closed >= len(ROLES), f"closed {closed} connections"

    async def backlog() -> dict[str, int]:
        return await asyncio.to_thread(queue_depths, f"{namespace}.q.")

    try:
        async with chaos_client(RabbitBus(amqp_url, namespace)) as client:
            stack = Stack(client, stack_env(amqp_url, namespace), tmp_path)
            try:
                await run_chaos(client, stack, drop, backlog)
            finally:
                await stack.stop()
    finally:
        await asyncio.to_thread(drop_rabbitmq_namespace, amqp_url, namespace)


async def test_chaos_on_a_jetstream_cluster_with_a_node_killed(tmp_path: Path) -> None:
    """Three nats-server nodes, every stream replicated three times; kill -9 of the
    schedulers (3), the hosts process (2) and the node leading the event log, then the
    one leading the command queues (each started again on its port and store), under
    300 placements."""
    nodes = nats_cluster(tmp_path / "cluster")
    try:
        await asyncio.to_thread(start_cluster, nodes)
    except BrokerError as err:
        pytest.skip(f"no NATS cluster: {err}")
    namespace = unique_namespace()
    turn = iter(range(1_000_000))

    def url() -> str:
        # Each process is given a node that is up; it learns the others from the cluster.
        up = [n for n in nodes if n.running]
        return up[next(turn) % len(up)].url

    # The leader of the event log, then that of the command queues: the nodes whose loss
    # forces an election under load.
    victims = iter(("EVENTS", "COMMANDS"))

    async def kill_leader() -> None:
        leader = await audit.stream_leader(
            [n.url for n in nodes if n.running], f"{namespace.upper()}_{next(victims)}"
        )
        [node] = [n for n in nodes if n.name == leader]
        node.kill()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(node.start)

    async def backlog() -> dict[str, int]:
        found = await audit.nats_backlog(nodes[0].url, namespace)
        return {name: pending + unacked for name, (pending, unacked) in found.items()}

    env = stack_env(nodes[0].url, namespace, VPLANE_NATS_REPLICAS="3")
    try:
        bus = NatsBus(nodes[0].url, namespace, connect_timeout=10, replicas=3)
        await started_on_cluster(bus)
        async with chaos_client(bus) as client:
            stack = Stack(client, env, tmp_path, url=url)
            try:
                await run_chaos(client, stack, kill_leader, backlog)
                copies = await audit.replicas(nodes[0].url, namespace)
                assert copies == dict.fromkeys(REPLICATED, 3)
            finally:
                await stack.stop()
    finally:
        for node in nodes:
            node.stop()


async def started_on_cluster(bus: NatsBus, timeout: float = 60) -> None:
    """A new cluster elects its JetStream leader first: until then streams cannot be made."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await bus.start()
        except (BusError, nats.errors.Error, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await bus.close()
            await asyncio.sleep(1.0)
        else:
            await bus.close()
            return
