"""The service runtime: rebuild from the log, resume consumers, run, drain on a signal."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog

from schemas import Envelope, Event, Message, Reply
from schemas.service import ServiceStarted, ServiceStopped
from shared.bus import Bus, ConsumerSpec, Delivery, Logged, QueryHandler, Stream, Subscription
from shared.bus.subjects import event_subject, matches, stream_subject

log = structlog.get_logger("vplane.runtime")

OBSERVED_KEPT = 10_000
DRAIN_STEP_SECONDS = 5.0

Fold = Callable[[int, Envelope[Message]], None]
# Answers a command with the events to append; async, because mechanism services
# (hosts) move bulk bytes at this edge before they can answer.
Decide = Callable[[Envelope[Message]], Coroutine[Any, Any, list[Event]]]
Loop = Callable[["Runtime"], Coroutine[Any, Any, None]]


@dataclass
class ServiceDefinition:
    """Everything a service is made of; each service's bootstrap fills one in.

    ``fold`` is applied to every event of ``fold_filters`` in log order, first while
    rebuilding and then for every event this service appends. ``decide`` answers a
    command with the events to append; the runtime makes that exactly-once.
    """

    name: str
    fold: Fold | None = None
    fold_filters: tuple[str, ...] = ()
    # Keep folding other producers' events as they are appended, not only at start.
    follow: bool = False
    decide: Decide | None = None
    # Durable command consumers by name: several processes of one service share a
    # consumer of the same name, or each takes its own (hosts addressed to it).
    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    queries: dict[str, QueryHandler] = field(default_factory=dict)
    # Answers a telemetry sample with the events to append (a durable consumer of the
    # telemetry stream, ``telemetry_filters``); a PoisonMessage dead-letters the sample.
    telemetry: Decide | None = None
    telemetry_filters: tuple[str, ...] = ("host.>",)
    # Runs once the state is rebuilt and before any command is taken.
    setup: Loop | None = None
    loops: list[Loop] = field(default_factory=list)
    clock: Callable[[], float] = lambda: 0.0


def _package_version() -> str:
    try:
        return version("vplane")
    except PackageNotFoundError:
        return "0+unknown"


class Runtime:
    def __init__(self, definition: ServiceDefinition, bus: Bus, instance: str) -> None:
        self.definition = definition
        self.bus = bus
        self.instance = instance
        self.handled = 0
        self._applied_seq = 0
        self._rebuilt_seq = 0
        self._observed: set[int] = set()
        # Commands whose answer is already in the log: a redelivery changes nothing.
        self._answered: set[uuid.UUID] = set()
        # Held while a command is decided, appended and folded: a query waits for it, so
        # whoever saw the answering event in the log also sees it in every query.
        self._deciding = asyncio.Lock()
        self._subs: list[Subscription] = []
        self._loops: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    @property
    def name(self) -> str:
        return self.definition.name

    async def run(self, stop: asyncio.Event) -> None:
        structlog.contextvars.bind_contextvars(service=self.name, instance=self.instance)
        await self.bus.start()
        try:
            rebuilt = await self._rebuild()
            self._rebuilt_seq, self._observed = self._applied_seq, set()
            if self.definition.setup is not None:
                await self.definition.setup(self)
            await self._start_consumers()
            # Announced once its consumers are in place: from now on it takes commands.
            await self._append_own(
                ServiceStarted(
                    service=self.name,
                    instance=self.instance,
                    version=_package_version(),
                    rebuilt_from_seq=1,
                    rebuilt_events=rebuilt,
                )
            )
            self.ready.set()
            log.info("service ready", rebuilt_events=rebuilt, log_seq=self._applied_seq)
            await stop.wait()
            await self._drain()
            await self._append_own(
                ServiceStopped(
                    service=self.name, instance=self.instance, reason="signal", handled=self.handled
                )
            )
            log.info("service stopped", handled=self.handled)
        finally:
            await self.bus.close()

    async def _rebuild(self) -> int:
        fold = self.definition.fold
        if fold is None:
            return 0
        count = 0
        async for entry in self.bus.replay(filters=self.definition.fold_filters):
            if entry.envelope is None:
                log.warning(
                    "skipping undecodable event in the log", seq=entry.seq, error=entry.error
                )
                continue
            self._observe(entry)
            count += 1
        return count

    def _observe(self, entry: Logged) -> None:
        """Fold an entry once. Own appends are folded as they are made and may overtake
        entries the follower has yet to deliver, so entries are recognised by sequence."""
        env = entry.envelope
        if env is None or entry.seq <= self._rebuilt_seq:
            return
        if self.definition.follow:
            if entry.seq in self._observed:
                return
            self._observed.add(entry.seq)
        elif entry.seq <= self._applied_seq:
            # Without a follower only own appends arrive, in order: a high-water mark will do.
            return
        if env.producer == self.name and env.causation_id is not None:
            self._answered.add(env.causation_id)
        if self.definition.fold is not None and self._wanted(entry.subject):
            self.definition.fold(entry.seq, env)
        self._applied_seq = max(self._applied_seq, entry.seq)

    def _wanted(self, subject: str) -> bool:
        filters = self.definition.fold_filters
        return not filters or any(
            matches(stream_subject(self.bus.namespace, Stream.EVENTS, f), subject) for f in filters
        )

    async def _start_consumers(self) -> None:
        d = self.definition
        if d.follow and d.fold is not None:
            self._subs.append(
                await self.bus.watch(
                    Stream.EVENTS, d.fold_filters, self._follow, from_seq=self._applied_seq + 1
                )
            )
        if d.decide is not None:
            for consumer, filters in d.commands.items():
                spec = ConsumerSpec(name=consumer, stream=Stream.COMMANDS, filters=filters)
                self._subs.append(await self.bus.consume(spec, self._on_command))
        if d.telemetry is not None:
            spec = ConsumerSpec(
                name=f"{d.name}-telemetry", stream=Stream.TELEMETRY, filters=d.telemetry_filters
            )
            self._subs.append(await self.bus.consume(spec, self._on_telemetry))
        for target, handler in d.queries.items():
            self._subs.append(await self.bus.serve(target, self._after_commands(handler)))
        self._loops = [asyncio.create_task(loop(self)) for loop in d.loops]

    async def _follow(self, entry: Logged) -> None:
        # Under the lock, a decision in progress never sees the fold change beneath it.
        async with self._deciding:
            self._observe(entry)
            # The follower delivers in order: nothing below this entry is still to come.
            if len(self._observed) > OBSERVED_KEPT:
                self._observed = {seq for seq in self._observed if seq >= entry.seq}

    def _after_commands(self, handler: QueryHandler) -> QueryHandler:
        async def answer(env: Envelope[Message]) -> Reply:
            async with self._deciding:
                return await handler(env)

        return answer

    async def _on_command(self, env: Envelope[Message], delivery: Delivery) -> None:
        if env.id in self._answered:
            log.info("command already answered, acknowledging", attempt=delivery.attempt)
            return
        assert self.definition.decide is not None
        async with self._deciding:
            events = await self.definition.decide(env)
            await self.publish(events, caused_by=env)
        self._answered.add(env.id)
        self.handled += 1

    async def _on_telemetry(self, env: Envelope[Message], _delivery: Delivery) -> None:
        assert self.definition.telemetry is not None
        async with self._deciding:
            await self.publish_for_sample(env, await self.definition.telemetry(env))

    async def publish_for_sample(self, sample: Envelope[Message], events: list[Event]) -> None:
        """Append what a telemetry sample caused. Ids derive from the sample and this
        service (several services answer one sample): a redelivered sample appends
        nothing twice. A handler that sends commands because of these events appends
        them itself first, so the log shows the cause before the effect."""
        ids = [uuid.uuid5(sample.id, f"{self.name}/{i}") for i in range(len(events))]
        await self.publish(events, caused_by=sample, ids=ids)

    def exclusive(self) -> asyncio.Lock:
        """Held while deciding: a loop that decides (a scheduling round) takes it too."""
        return self._deciding

    async def publish(
        self,
        events: list[Event],
        *,
        caused_by: Envelope[Message] | None,
        ids: list[uuid.UUID] | None = None,
    ) -> list[int]:
        """Append events and fold them; ids derive from the cause (or are given), so a
        retry is deduplicated. Returns their log sequences."""
        sim_time = self.definition.clock()
        seqs = []
        for i, event in enumerate(events):
            if ids is not None:
                msg_id: uuid.UUID | None = ids[i]
            else:
                msg_id = caused_by.derived_id(i) if caused_by is not None else None
            env = Envelope.wrap(
                event, producer=self.name, caused_by=caused_by, sim_time=sim_time, id=msg_id
            )
            result = await self.bus.append(env)
            self._observe(Logged(result.seq, event_subject(self.bus.namespace, env), b"", env))
            seqs.append(result.seq)
        return seqs

    async def append_at(self, event: Event, expected_version: int) -> int:
        """Append one event at its aggregate's expected version (ConcurrencyError when
        another writer got there first) and fold it."""
        env = Envelope.wrap(event, producer=self.name, sim_time=self.definition.clock())
        result = await self.bus.append(env, expected_version=expected_version)
        self._observe(Logged(result.seq, event_subject(self.bus.namespace, env), b"", env))
        return result.seq

    async def catch_up(self, filters: tuple[str, ...], from_seq: int) -> None:
        """Fold what the log holds of ``filters`` from ``from_seq`` on, ahead of the follower."""
        async for entry in self.bus.replay(from_seq=from_seq, filters=filters):
            self._observe(entry)

    async def _append_own(self, event: Event) -> None:
        await self.publish([event], caused_by=None)

    async def _drain(self) -> None:
        for task in self._loops:
            task.cancel()
        for task in self._loops:
            await self._bounded(task, f"loop {task.get_name()}")
        for sub in self._subs:
            await self._bounded(sub.stop(), f"subscription {type(sub).__name__}")

    async def _bounded(self, step: Awaitable[object], what: str) -> None:
        """Stopping never hangs the process: a step that takes too long is left behind."""
        try:
            async with asyncio.timeout(DRAIN_STEP_SECONDS):
                await step
        except asyncio.CancelledError:
            pass
        except TimeoutError:
            where = ""
            if isinstance(step, asyncio.Task):
                frames = step.get_stack(limit=8)
                where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            log.warning("stopping took too long, leaving it", step=what, at=where)


def run_service(definition: ServiceDefinition, bus: Bus, instance: str) -> None:
    """Run a service until SIGTERM or SIGINT; the entry point of every ``__main__``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Runtime(definition, bus, instance).run(stop)

    asyncio.run(main())
