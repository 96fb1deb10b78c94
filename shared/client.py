"""The operator's and the test harness's door: send commands, await their answers, ask queries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from schemas import Command, Envelope, Message, Query, Reply
from schemas.host import HostRegistered
from shared.bus import Bus, BusError, Logged, Stream

Match = Callable[[Envelope[Message]], bool]


class AnswerTimeout(BusError):
    """No answering event arrived in time."""


class UnknownTarget(BusError):
    """A command addressed to a host that no hosts process has registered: nothing would
    ever answer it, so it is not sent."""


class Client:
    def __init__(self, bus: Bus, producer: str = "cli") -> None:
        self.bus = bus
        self.producer = producer

    async def send(self, command: Command) -> Envelope[Command]:
        await self.check_target(command)
        env = Envelope.wrap(command, producer=self.producer)
        await self.bus.send(env)
        return env

    async def check_target(self, command: Command) -> None:
        """Refuse at once a command for a host the log has never seen registered."""
        kind, _, host = command.aggregate().partition("/")
        if kind != "host" or not host:
            return
        async for entry in self.bus.replay(filters=(f"host.{host}",)):
            if entry.envelope is not None and isinstance(entry.envelope.data, HostRegistered):
                return
        raise UnknownTarget(
            f"rejected (unknown-host): no host {host} is registered (see `vplane hosts`)"
        )

    async def send_and_wait(
        self, command: Command, *, timeout: float = 10.0, count: int = 1
    ) -> list[Envelope[Message]]:
        """Send a command and wait for the first ``count`` events it caused."""
        await self.check_target(command)
        env = Envelope.wrap(command, producer=self.producer)
        return await self.wait_for(
            lambda e: e.causation_id == env.id,
            count=count,
            timeout=timeout,
            before=lambda: self.bus.send(env),
        )

    async def send_until(
        self, command: Command, *until: str, timeout: float = 10.0
    ) -> Envelope[Message]:
        """Send a command and return the first event of its workflow of an ``until`` type
        (further down it, say VmCreated for a PlaceVm), or the refusal that ends it."""
        await self.check_target(command)
        env = Envelope.wrap(command, producer=self.producer)
        [answer] = await self.wait_for(
            lambda e: e.correlation_id == env.id and e.type in {*until, "CommandRejected"},
            timeout=timeout,
            before=lambda: self.bus.send(env),
        )
        return answer

    async def wait_for(
        self,
        match: Match,
        *,
        count: int = 1,
        timeout: float = 10.0,
        before: Callable[[], Awaitable[None]] | None = None,
        filters: Sequence[str] = (),
        enough: Callable[[list[Envelope[Message]]], bool] | None = None,
    ) -> list[Envelope[Message]]:
        """Wait for ``count`` new events that ``match`` (or until those found are
        ``enough``); ``before()`` runs once watching began."""
        found: list[Envelope[Message]] = []
        done = asyncio.Event()

        async def on_event(entry: Logged) -> None:
            if entry.envelope is not None and match(entry.envelope):
                found.append(entry.envelope)
                if enough(found) if enough is not None else len(found) >= count:
                    done.set()

        # Watching "from now" misses nothing published once watch() has returned.
        watcher = await self.bus.watch(Stream.EVENTS, tuple(filters), on_event)
        try:
            if before is not None:
                await before()
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                raise AnswerTimeout(
                    f"no answer within {timeout:g}s (is the handling service running?)"
                ) from None
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
        return found if enough is not None else found[:count]

    async def query(self, query: Query, *, timeout: float = 5.0) -> Reply:
        reply = await self.bus.request(
            Envelope.wrap(query, producer=self.producer), timeout=timeout
        )
        assert isinstance(reply.data, Reply)
        return reply.data
