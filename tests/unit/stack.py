"""The services in this process on the in-memory bus, with short rounds and fast emulated
time: their behaviour without a broker (the integration tests use real brokers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from schemas import Envelope, Message
from services.contention.bootstrap import build as build_monitor
from services.hosts.bootstrap import build as build_hosts
from services.scheduler.bootstrap import build as build_scheduler
from services.scheduler.ledger import Ledger, evolve
from services.tenants.bootstrap import build as build_tenants
from shared.bus.memory import MemoryBus
from shared.client import Client
from shared.runtime import Runtime
from shared.settings import Settings
from shared.testing import running, unique_namespace

ROUND = 0.1


@dataclass
class Stack:
    bus: MemoryBus
    client: Client

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


@contextlib.asynccontextmanager
async def memory_stack(
    hosts: int = 2, *, tenants: bool = False, monitor: bool = False, **settings: object
) -> AsyncIterator[Stack]:
    """``settings``: VPLANE_* settings by field name (ha_failures=0, speed=50, ...);
    ``tenants`` and ``monitor`` add the tenants service and the contention monitor."""
    bus = MemoryBus(unique_namespace())
    base = {"hosts": hosts, "round_seconds": ROUND, "speed": 50.0, **settings}
    definitions = [build_hosts(Settings.from_env({}, **base))] + [
        build_scheduler(Settings.from_env({}, priority=p, **base)) for p in ("high", "low")
    ]
    if tenants:
        definitions.append(build_tenants(Settings.from_env({}, **base)))
    if monitor:
        definitions.append(build_monitor(Settings.from_env({}, **base)))
    async with contextlib.AsyncExitStack() as stack:
        for i, definition in enumerate(definitions):
            await stack.enter_async_context(running(Runtime(definition, bus, f"i{i}")))
        yield Stack(bus, Client(bus, producer="test"))
