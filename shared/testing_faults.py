"""A bus that fails on purpose, over any bus: the test kit's stand-in for a broker that
loses appends, acknowledgements, sends and its connection.

``FaultyBus`` wraps a real adapter (memory, NATS, RabbitMQ) and passes every call on,
except where a ``Faults`` plan says to fail it: an atomic append before it lands, or
after it landed (an acknowledgement lost: the caller is told ``BusUnavailable`` though
the events are in the log), a send, an emit, or every call for a while (a dropped
connection, during which nothing is delivered either). A ``Record``, shared by every
wrapper of a test, keeps what the log confirmed and what was sent, so a test can check
that each command went out only once its outbox record was in the log.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope, Message, Reply
from schemas.service import CommandsIssued
from shared.bus import (
    AppendResult,
    Bus,
    BusUnavailable,
    ConsumerSpec,
    DeadLetter,
    Delivery,
    Handler,
    Logged,
    QueryHandler,
    Stream,
    Subscription,
)
from shared.bus.protocol import WatchHandler
from shared.effects import issued

Match = Callable[[Envelope[Any]], bool]


def of_type(*types: str) -> Match:
    """Matches an envelope of one of ``types``, or an outbox record issuing one."""

    def match(env: Envelope[Any]) -> bool:
        if env.type in types:
            return True
        data = env.data
        return isinstance(data, CommandsIssued) and any(c.type in types for c in issued(data))

    return match


def anything(_env: Envelope[Any]) -> bool:
    return True


@dataclass
class Rule:
    """Fail the next ``times`` calls whose envelopes (any of a batch's) ``match``."""

    times: int
    match: Match
    # An append that lands and is reported failed anyway (its acknowledgement lost).
    landed: bool = False
    hits: int = 0


@dataclass
class Faults:
    """What to fail; one plan may be shared by several wrappers (one broker, many clients)."""

    appends: list[Rule] = field(default_factory=list)
    sends: list[Rule] = field(default_factory=list)
    emits: list[Rule] = field(default_factory=list)
    dropped_until: float = 0.0
    # Each fault injected, in order, for a test's report.
    injected: list[str] = field(default_factory=list)

    def fail_append(self, match: Match = anything, *, times: int = 1, landed: bool = False) -> Rule:
        rule = Rule(times, match, landed)
        self.appends.append(rule)
        return rule

    def fail_send(self, match: Match = anything, *, times: int = 1) -> Rule:
        rule = Rule(times, match)
        self.sends.append(rule)
        return rule

    def fail_emit(self, match: Match = anything, *, times: int = 1) -> Rule:
        rule = Rule(times, match)
        self.emits.append(rule)
        return rule

    def drop(self, seconds: float) -> None:
        """Every call fails, and nothing is delivered, for ``seconds`` from now."""
        self.dropped_until = time.monotonic() + seconds
        self.injected.append(f"connection dropped for {seconds}s")

    @property
    def dropped(self) -> bool:
        return time.monotonic() < self.dropped_until

    def check_connection(self, call: str) -> None:
        if self.dropped:
            raise BusUnavailable(f"injected: connection dropped ({call})")

    async def reconnected(self) -> None:
        wait = self.dropped_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def take(self, rules: list[Rule], envs: list[Envelope[Any]]) -> Rule | None:
        """The first rule with failures left that matches ``envs``, counted as used."""
        for rule in rules:
            if rule.hits < rule.times and any(rule.match(env) for env in envs):
                rule.hits += 1
                return rule
        return None


@dataclass(frozen=True)
class Sent:
    env: Envelope[Any]
    # Whether an append holding the command's outbox record had been confirmed by then.
    recorded_before: bool


@dataclass
class Record:
    """What the wrapped buses confirmed and sent; shared by every wrapper of a test."""

    # Commands whose outbox record an append confirmed (landed, or found there already).
    logged_commands: set[uuid.UUID] = field(default_factory=set)
    sent: list[Sent] = field(default_factory=list)

    def confirmed(self, envs: list[Envelope[Any]]) -> None:
        for env in envs:
            if isinstance(env.data, CommandsIssued):
                self.logged_commands.update(c.id for c in issued(env.data))


class FaultyBus:
    """``inner`` with the failures ``faults`` plans; ``owns``: start and close ``inner``
    with this wrapper (several wrappers may share one in-memory bus)."""

    def __init__(
        self, inner: Bus, faults: Faults, record: Record | None = None, *, owns: bool = True
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.record = record if record is not None else Record()
        self.owns = owns
        self.namespace = inner.namespace

    @property
    def available(self) -> bool:
        return not self.faults.dropped and self.inner.available

    async def start(self) -> None:
        if self.owns:
            await self.inner.start()

    async def close(self) -> None:
        if self.owns:
            await self.inner.close()

    def _fail(self, rules: list[Rule], envs: list[Envelope[Any]], what: str) -> Rule | None:
        self.faults.check_connection(what)
        rule = self.faults.take(rules, envs)
        if rule is not None:
            self.faults.injected.append(f"{what} {[e.type for e in envs]} landed={rule.landed}")
        return rule

    async def append(
        self, env: Envelope[Any], *, expected_version: int | None = None
    ) -> AppendResult:
        self.faults.check_connection("append")
        return await self.inner.append(env, expected_version=expected_version)

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        self.faults.check_connection("append_many")
        return await self.inner.append_many(envs)

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        rule = self._fail(self.faults.appends, envs, "append_batch")
        if rule is not None and not rule.landed:
            raise BusUnavailable("injected: the append was lost")
        results = await self.inner.append_batch(envs, expected=expected)
        self.record.confirmed(envs)
        if rule is not None:
            raise BusUnavailable("injected: the append landed, its acknowledgement was lost")
        return results

    async def version(self, aggregate: str) -> int:
        self.faults.check_connection("version")
        return await self.inner.version(aggregate)

    async def last_seq(self) -> int:
        self.faults.check_connection("last_seq")
        return await self.inner.last_seq()

    async def replay(
        self, *, from_seq: int = 1, filters: tuple[str, ...] = ()
    ) -> AsyncIterator[Logged]:
        self.faults.check_connection("replay")
        async for entry in self.inner.replay(from_seq=from_seq, filters=filters):
            yield entry

    async def send(self, env: Envelope[Any]) -> None:
        if self._fail(self.faults.sends, [env], "send") is not None:
            raise BusUnavailable("injected: the send was lost")
        recorded = env.id in self.record.logged_commands
        await self.inner.send(env)
        self.record.sent.append(Sent(env, recorded))

    async def send_many(self, envs: list[Envelope[Any]]) -> None:
        # One at a time, so that a fault can fall between any two.
        for env in envs:
            await self.send(env)

    async def emit(self, env: Envelope[Any]) -> None:
        if self._fail(self.faults.emits, [env], "emit") is not None:
            raise BusUnavailable("injected: the sample was lost")
        await self.inner.emit(env)

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        self.faults.check_connection("publish_raw")
        await self.inner.publish_raw(stream, subject, data)

    async def consume(self, spec: ConsumerSpec, handler: Handler) -> Subscription:
        async def delivered(env: Envelope[Message], delivery: Delivery) -> None:
            # A dropped connection delivers nothing: the message waits for it to return.
            await self.faults.reconnected()
            await handler(env, delivery)

        return await self.inner.consume(spec, delivered)

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> Subscription:
        async def delivered(entry: Logged) -> None:
            await self.faults.reconnected()
            await handler(entry)

        return await self.inner.watch(stream, filters, delivered, from_seq=from_seq)

    async def request(self, env: Envelope[Any], *, timeout: float = 5.0) -> Envelope[Message]:
        self.faults.check_connection("request")
        return await self.inner.request(env, timeout=timeout)

    async def serve(self, target: str, handler: QueryHandler) -> Subscription:
        async def answer(env: Envelope[Message]) -> Reply:
            await self.faults.reconnected()
            return await handler(env)

        return await self.inner.serve(target, answer)

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        self.faults.check_connection("dead_letters")
        return await self.inner.dead_letters(consumer)

    async def unclaimed(
        self, pattern: str, known: Callable[[str], bool], handler: Handler, *, older_than: float
    ) -> int:
        self.faults.check_connection("unclaimed")
        return await self.inner.unclaimed(pattern, known, handler, older_than=older_than)

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        self.faults.check_connection("put_data")
        await self.inner.put_data(flow, chunks)

    async def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]:
        self.faults.check_connection("read_data")
        async for chunk in self.inner.read_data(flow, count, timeout=timeout):
            yield chunk
