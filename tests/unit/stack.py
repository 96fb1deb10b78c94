"""The services in this process with short rounds and fast emulated time, on the
in-memory bus (their behaviour without a broker) or, given a way to connect, on a real
broker; each service's bus can be made to fail on purpose (shared/testing_faults.py)."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas import Envelope, Message
from schemas.queries import ListVms, VmList
from services.contention.bootstrap import build as build_monitor
from services.ft.bootstrap import build as build_ft
from services.hosts.bootstrap import build as build_hosts
from services.migration.bootstrap import build as build_coordinator
from services.scheduler.bootstrap import build as build_scheduler
from services.scheduler.ledger import Ledger, evolve
from services.sharing.bootstrap import build as build_sharing
from services.tenants.bootstrap import build as build_tenants
from shared.bus import Bus
from shared.bus.memory import MemoryBus
from shared.capacity import PoolReplay, differences, pool_from_log
from shared.client import Client
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings
from shared.testing import poll, unique_namespace
from shared.testing_faults import Faults, FaultyBus, Record

ROUND = 0.1
START_TIMEOUT = 10.0

# A new connection to the test's broker in a namespace.
Connect = Callable[[str], Bus]


@dataclass
class _Running:
    runtime: Runtime
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class Stack:
    bus: Bus
    client: Client
    faults: Faults
    record: Record
    builders: dict[str, Callable[[], ServiceDefinition]]
    connect: Callable[[], FaultyBus]
    running: dict[str, _Running] = field(default_factory=dict)
    instances: int = 0

    async def start(self, name: str) -> Runtime:
        """Start the service (from the log, as a restarted process does)."""
        self.instances += 1
        runtime = Runtime(self.builders[name](), self.connect(), f"i{self.instances}")
        stop = asyncio.Event()
        task = asyncio.create_task(runtime.run(stop), name=f"service-{name}")
        ready = asyncio.create_task(runtime.ready.wait())
        await asyncio.wait({task, ready}, timeout=START_TIMEOUT, return_when="FIRST_COMPLETED")
        ready.cancel()
        if not runtime.ready.is_set():
            task.cancel()
            raise AssertionError(f"{name} did not start within {START_TIMEOUT}s")
        self.running[name] = _Running(runtime, stop, task)
        return runtime

    async def stop(self, name: str) -> None:
        service = self.running.pop(name)
        service.stop.set()
        await asyncio.wait_for(service.task, START_TIMEOUT)

    async def kill(self, name: str) -> None:
        """Stop the service as a killed process stops: mid-step, saying nothing, its
        consumers gone with it (what it took and did not finish is delivered again)."""
        service = self.running.pop(name)
        service.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await service.task
        for sub in service.runtime._subs:
            await sub.stop()

    async def restart(self, name: str) -> Runtime:
        await self.stop(name)
        return await self.start(name)

    def failed(self) -> dict[str, BaseException]:
        """The services whose run ended by itself (a loop that gave up, say)."""
        return {
            name: s.task.exception() or RuntimeError("stopped")
            for name, s in self.running.items()
            if s.task.done() and not s.task.cancelled()
        }

    async def ledger(self) -> Ledger:
        """The pool as the log has it now."""
        ledger = Ledger()
        async for entry in self.bus.replay(filters=("host.>", "pool.>")):
            if entry.envelope is not None:
                ledger = evolve(ledger, entry.seq, entry.envelope.data)
        return ledger

    async def events(self, match: Callable[[Envelope[Message]], bool]) -> list[Envelope[Message]]:
        return [
            e.envelope
            async for e in self.bus.replay()
            if e.envelope is not None and match(e.envelope)
        ]

    async def of_type(self, *types: str) -> list[Envelope[Message]]:
        return await self.events(lambda e: e.type in types)

    async def audit(self) -> None:
        """Every scenario ends with a pool the log never took over capacity (read
        independently of the schedulers), whose VM reservations are what the hosts run."""
        pool = await self.pool()
        assert pool.over == [], pool.over[:5]
        assert pool.twice == [], pool.twice[:5]
        back = await self.time_going_back()
        assert back == [], back[:5]
        if not {"hosts", "scheduler-high", "scheduler-low"} <= set(self.running):
            return
        # Commands may still be on their way (a migration's end is settled in the next
        # round): the two sides agree once the stack is quiet.
        await poll(
            self.drift,
            lambda found: found == [],
            timeout=10,
            what="the ledger equal to what the hosts run",
        )

    async def time_going_back(self) -> list[str]:
        """Each event whose emulated time is earlier than that of an event its producer
        appended before it (across restarts too): one clock, which never goes back."""
        latest: dict[str, float] = {}
        back: list[str] = []
        async for entry in self.bus.replay():
            env = entry.envelope
            if env is None or env.producer == self.client.producer:
                continue
            before = latest.get(env.producer, 0.0)
            if env.sim_time < before:
                back.append(f"#{entry.seq} {env.producer} {env.type}: {env.sim_time} < {before}")
            latest[env.producer] = max(before, env.sim_time)
        return back

    async def pool(self) -> PoolReplay:
        return await pool_from_log(self.bus)

    async def drift(self) -> list[str]:
        reply = await self.client.query(ListVms())
        assert isinstance(reply, VmList)
        return differences(await self.pool(), reply.vms)


def _builders(
    tenants: bool, monitor: bool, sharing: bool, ft: bool, settings: dict[str, object]
) -> dict[str, Callable[[], ServiceDefinition]]:
    def of(**extra: object) -> Settings:
        return Settings.from_env({}, **settings, **extra)

    builders: dict[str, Callable[[], ServiceDefinition]] = {
        "hosts": lambda: build_hosts(of()),
        "scheduler-high": lambda: build_scheduler(of(priority="high")),
        "scheduler-low": lambda: build_scheduler(of(priority="low")),
        "migration-coordinator": lambda: build_coordinator(of()),
    }
    if sharing:
        builders["page-sharing"] = lambda: build_sharing(of())
    if ft:
        builders["ft"] = lambda: build_ft(of())
    if tenants:
        builders["tenants"] = lambda: build_tenants(of())
    if monitor:
        builders["contention-monitor"] = lambda: build_monitor(of())
    return builders


@contextlib.asynccontextmanager
async def service_stack(
    hosts: int = 2,
    *,
    connect: Connect | None = None,
    namespace: str | None = None,
    faults: Faults | None = None,
    tenants: bool = False,
    monitor: bool = False,
    sharing: bool = False,
    ft: bool = False,
    settings: Mapping[str, object] | None = None,
    only: Sequence[str] | None = None,
) -> AsyncIterator[Stack]:
    """``connect``: a broker (else one in-memory bus for all); ``faults``: what each
    service's bus fails (the test's own client never fails); ``settings``: VPLANE_*
    settings by field name (ha_failures=0, speed=50, ...); ``tenants``, ``monitor`` and
    ``sharing`` add the tenants service, the contention monitor and the page-sharing
    daemon, ``ft`` the FT service; ``only`` starts just the services it names (say,
    the hosts alone, driven by commands sent straight to them)."""
    namespace = namespace or unique_namespace()
    faults = faults or Faults()
    record = Record()
    memory = MemoryBus(namespace) if connect is None else None

    def service_bus() -> FaultyBus:
        if memory is not None:
            return FaultyBus(memory, faults, record, owns=False)
        assert connect is not None
        return FaultyBus(connect(namespace), faults, record)

    client_bus: Bus = memory if memory is not None else service_bus().inner
    await client_bus.start()
    # The hosts' shared datastore, the stack's own: gone with it.
    datastore = tempfile.TemporaryDirectory(prefix="vplane-datastore-")
    base = {
        "hosts": hosts,
        "round_seconds": ROUND,
        "speed": 50.0,
        "datastore": datastore.name,
        # Every fold a scheduler takes from its decisions is checked against the log's.
        "check_folds": True,
        **(settings or {}),
    }
    stack = Stack(
        bus=client_bus,
        client=Client(client_bus, producer="test"),
        faults=faults,
        record=record,
        builders=_builders(tenants, monitor, sharing, ft, base),
        connect=service_bus,
    )
    errors: list[Exception] = []
    try:
        for name in stack.builders:
            if only is None or name in only:
                await stack.start(name)
        yield stack
        await stack.audit()
    finally:
        for name in reversed(list(stack.running)):
            try:
                await stack.stop(name)
            except Exception as err:
                errors.append(err)
        await client_bus.close()
        datastore.cleanup()
    if errors:
        raise errors[0]


def memory_stack(
    hosts: int = 2,
    *,
    tenants: bool = False,
    monitor: bool = False,
    sharing: bool = False,
    ft: bool = False,
    **settings: object,
) -> contextlib.AbstractAsyncContextManager[Stack]:
    """The stack on the in-memory bus."""
    return service_stack(
        hosts, tenants=tenants, monitor=monitor, sharing=sharing, ft=ft, settings=settings
    )
