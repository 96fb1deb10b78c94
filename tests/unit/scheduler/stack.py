"""The hosts service and both schedulers in this process on the in-memory bus, with short
rounds: the schedulers' behaviour without a broker (the integration tests use NATS)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from schemas import Envelope, Message
from services.hosts.bootstrap import build as build_hosts
from services.scheduler.bootstrap import build as build_scheduler
from services.scheduler.ledger import Ledger, evolve
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
async def memory_stack(hosts: int = 2, **settings: object) -> AsyncIterator[Stack]:
    """``settings``: VPLANE_* settings by field name (ha_failures=0, speed=50, ...)."""
    bus = MemoryBus(unique_namespace())
    base = {"hosts": hosts, "round_seconds": ROUND, "speed": 50.0, **settings}
    definitions = [build_hosts(Settings.from_env({}, **base))] + [
        build_scheduler(Settings.from_env({}, priority=p, **base)) for p in ("high", "low")
    ]
    async with contextlib.AsyncExitStack() as stack:
        for i, definition in enumerate(definitions):
            await stack.enter_async_context(running(Runtime(definition, bus, f"i{i}")))
        yield Stack(bus, Client(bus, producer="test"))
