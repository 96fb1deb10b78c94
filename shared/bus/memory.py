"""An in-process bus with the same semantics as the brokers; for unit tests only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope, Message
from shared.bus import subjects
from shared.bus.dedupe import RecentIds, unique
from shared.bus.dispatch import (
    Ack,
    Bury,
    Retry,
    answer,
    dispatch,
    entry_of,
    read_reply,
    together,
)
from shared.bus.errors import BusError, ConcurrencyError, RequestFailed
from shared.bus.flows import first_chunks
from shared.bus.protocol import (
    BATCH_LIMIT,
    UNCLAIMED,
    AppendResult,
    ConsumerSpec,
    DeadLetter,
    Delivery,
    Handler,
    Logged,
    QueryHandler,
    Stream,
    WatchHandler,
)

TELEMETRY_LIMIT = 10_000


@dataclass(slots=True)
class _Entry:
    seq: int
    subject: str
    data: bytes
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Log:
    entries: list[_Entry] = field(default_factory=list)
    next_seq: int = 1
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add(self, subject: str, data: bytes) -> int:
        seq = self.add_now(subject, data)
        await self.notify()
        return seq

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def add_now(self, subject: str, data: bytes) -> int:
        """Add without waking readers; they see the entry at their next look."""
        seq = self.next_seq
        self.next_seq += 1
        self.entries.append(_Entry(seq, subject, data))
        return seq

    def first_from(self, seq: int, filters: tuple[str, ...]) -> _Entry | None:
        found = self.firsts_from(seq, filters, 1)
        return found[0] if found else None

    def firsts_from(self, seq: int, filters: tuple[str, ...], count: int) -> list[_Entry]:
        """The first ``count`` entries from ``seq`` on that ``filters`` select."""
        found: list[_Entry] = []
        for entry in self.entries:
            if entry.seq >= seq and _selected(entry.subject, filters):
                found.append(entry)
                if len(found) == count:
                    break
        return found

    async def wait_change(self, timeout: float) -> None:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)


def _selected(subject: str, filters: tuple[str, ...]) -> bool:
    return not filters or any(subjects.matches(f, subject) for f in filters)


class _Task:
    def __init__(self) -> None:
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            # Waited for, not awaited: a task its owner already cancelled (a stop that
            # took too long) is stopped, not a cancellation of whoever closes the bus.
            await asyncio.wait({self.task})


class _Server:
    """A query server; once stopped, its target has nobody answering (unless another
    server took it over meanwhile)."""

    def __init__(
        self, servers: dict[str, QueryHandler], target: str, handler: QueryHandler
    ) -> None:
        self._servers, self._target, self._handler = servers, target, handler

    async def stop(self) -> None:
        if self._servers.get(self._target) is self._handler:
            del self._servers[self._target]


class MemoryBus:
    def __init__(self, namespace: str = "vplane") -> None:
        self.namespace = namespace
        self._logs = {s: _Log() for s in Stream}
        self._ids: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._cursors: dict[str, int] = {}
        self._dead: list[DeadLetter] = []
        self._servers: dict[str, QueryHandler] = {}
        self._flows: dict[str, _Log] = {}
        self._tasks: list[_Task] = []

    @property
    def available(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in self._tasks:
            await task.stop()

    def _full(self, stream: Stream, filters: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(subjects.stream_subject(self.namespace, stream, f) for f in filters)

    async def append(
        self, env: Envelope[Any], *, expected_version: int | None = None
    ) -> AppendResult:
        key = str(env.id)
        if key in self._ids:
            return AppendResult(self._ids[key], duplicate=True)
        subject = subjects.event_subject(self.namespace, env)
        current = self._versions.get(subject, 0)
        if expected_version is not None and expected_version != current:
            raise ConcurrencyError(env.subject, expected_version, current)
        seq = await self._logs[Stream.EVENTS].add(subject, env.encode())
        self._ids[key] = seq
        self._versions[subject] = seq
        return AppendResult(seq, duplicate=False)

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        return [await self.append(env) for env in envs]

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        if len(envs) > BATCH_LIMIT:
            raise BusError(f"a batch holds at most {BATCH_LIMIT} events, not {len(envs)}")
        if any(str(env.id) in self._ids for env in envs):
            return [AppendResult(self._ids.get(str(env.id), 0), duplicate=True) for env in envs]
        # Checked against the versions as the batch itself moves them, as JetStream does.
        versions: dict[str, int] = {}
        last = self._logs[Stream.EVENTS].next_seq - 1
        for i, env in enumerate(envs):
            subject = subjects.event_subject(self.namespace, env)
            current = versions.get(subject, self._versions.get(subject, 0))
            want = (expected or {}).get(i)
            if want is not None and want != current:
                raise ConcurrencyError(env.subject, want, current)
            last += 1
            versions[subject] = last
        # No await between the check and the last append: the batch lands whole.
        results = [self._add_now(env) for env in envs]
        await self._logs[Stream.EVENTS].notify()
        return results

    def _add_now(self, env: Envelope[Any]) -> AppendResult:
        subject = subjects.event_subject(self.namespace, env)
        seq = self._logs[Stream.EVENTS].add_now(subject, env.encode())
        self._ids[str(env.id)] = seq
        self._versions[subject] = seq
        return AppendResult(seq, duplicate=False)

    async def version(self, aggregate: str) -> int:
        return self._versions.get(subjects.aggregate_subject(self.namespace, aggregate), 0)

    async def last_seq(self) -> int:
        return self._logs[Stream.EVENTS].next_seq - 1

    async def replay(
        self, *, from_seq: int = 1, filters: tuple[str, ...] = ()
    ) -> AsyncIterator[Logged]:
        end = await self.last_seq()
        wanted = self._full(Stream.EVENTS, filters)
        entries = [
            _logged(entry)
            for entry in list(self._logs[Stream.EVENTS].entries)
            if from_seq <= entry.seq <= end and _selected(entry.subject, wanted)
        ]

        async def each() -> AsyncIterator[Logged]:
            for entry in entries:
                yield entry

        async for logged in unique(each()):
            yield logged

    async def send(self, env: Envelope[Any]) -> None:
        await self._logs[Stream.COMMANDS].add(
            subjects.command_subject(self.namespace, env), env.encode()
        )

    async def send_many(self, envs: list[Envelope[Any]]) -> None:
        for env in envs:
            await self.send(env)

    async def emit(self, env: Envelope[Any]) -> None:
        log = self._logs[Stream.TELEMETRY]
        await log.add(subjects.telemetry_subject(self.namespace, env), env.encode())
        del log.entries[:-TELEMETRY_LIMIT]

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        await self._logs[stream].add(subjects.stream_subject(self.namespace, stream, subject), data)

    async def unclaimed(
        self, pattern: str, known: Callable[[str], bool], handler: Handler, *, older_than: float
    ) -> int:
        log = self._logs[Stream.COMMANDS]
        full = subjects.stream_subject(self.namespace, Stream.COMMANDS, pattern)
        target = full.split(".").index("*")
        waited = time.monotonic() - older_than
        stray = [
            e
            for e in log.entries
            if subjects.matches(full, e.subject)
            and not known(e.subject.split(".")[target])
            and e.at <= waited
        ]
        handled = 0
        for entry in stray:
            delivery = Delivery(entry.seq, 1, entry.subject)
            outcome = await dispatch(
                entry.data, delivery, handler, max_deliver=1, retry_delay=0.0, seen=RecentIds()
            )
            if isinstance(outcome, Retry):
                continue
            if isinstance(outcome, Bury):
                self._dead.append(
                    DeadLetter(UNCLAIMED, entry.subject, outcome.reason, 1, entry.data)
                )
            with contextlib.suppress(ValueError):
                log.entries.remove(entry)
            handled += 1
        return handled

    async def consume(self, spec: ConsumerSpec, handler: Handler) -> _Task:
        task = _Task()
        task.task = asyncio.create_task(self._consume(spec, handler, task))
        self._tasks.append(task)
        return task

    async def _consume(self, spec: ConsumerSpec, handler: Handler, me: _Task) -> None:
        log = self._logs[spec.stream]
        filters = self._full(spec.stream, spec.filters)
        work_queue = spec.stream is Stream.COMMANDS
        self._cursors.setdefault(spec.name, spec.start_seq)
        attempts: dict[int, int] = {}
        seen = RecentIds()
        while not me.stopping:
            entries = log.firsts_from(self._cursors[spec.name], filters, max(spec.in_flight, 1))
            if not entries:
                await log.wait_change(0.05)
                continue
            deliveries = []
            for entry in entries:
                attempt = attempts[entry.seq] = attempts.get(entry.seq, 0) + 1
                deliveries.append(Delivery(entry.seq, attempt, entry.subject))
            outcomes = await together(
                [
                    dispatch(
                        entry.data,
                        delivery,
                        handler,
                        max_deliver=spec.max_deliver,
                        retry_delay=spec.retry_delay,
                        seen=seen,
                    )
                    for entry, delivery in zip(entries, deliveries, strict=True)
                ]
            )
            pause = 0.0
            for entry, delivery, outcome in zip(entries, deliveries, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    raise outcome
                if isinstance(outcome, Retry):
                    # Delivered again next time; a cursor stays at the first to retry (the
                    # ones after it that were handled are recognised by id).
                    pause = max(pause, outcome.delay)
                    continue
                if isinstance(outcome, Bury):
                    self._dead.append(
                        DeadLetter(
                            spec.name, entry.subject, outcome.reason, delivery.attempt, entry.data
                        )
                    )
                assert isinstance(outcome, Ack | Bury)
                del attempts[entry.seq]
                if work_queue:
                    log.entries.remove(entry)
                elif not pause:
                    self._cursors[spec.name] = entry.seq + 1
            if pause:
                await asyncio.sleep(pause)

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> _Task:
        log = self._logs[stream]
        task = _Task()
        start = log.next_seq if from_seq is None else from_seq

        async def follow() -> None:
            cursor = start
            wanted = self._full(stream, filters)
            while not task.stopping:
                entry = log.first_from(cursor, wanted)
                if entry is None:
                    await log.wait_change(0.05)
                    continue
                cursor = entry.seq + 1
                await handler(_logged(entry))

        task.task = asyncio.create_task(follow())
        self._tasks.append(task)
        return task

    async def request(self, env: Envelope[Any], *, timeout: float = 5.0) -> Envelope[Message]:
        server = self._servers.get(env.subject)
        if server is None:
            raise RequestFailed(f"nobody answers queries to {env.subject}")
        try:
            raw = await asyncio.wait_for(
                answer(server, env.encode(), producer=env.subject), timeout
            )
        except TimeoutError:
            raise RequestFailed(f"no answer to {env.type} within {timeout}s") from None
        return read_reply(raw)

    async def serve(self, target: str, handler: QueryHandler) -> _Server:
        self._servers[target] = handler
        return _Server(self._servers, target, handler)

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        return [d for d in self._dead if d.consumer == consumer]

    def queued(self) -> list[str]:
        """The subjects of the commands waiting to be taken, oldest first."""
        return [e.subject for e in self._logs[Stream.COMMANDS].entries]

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        log = self._flows.setdefault(flow, _Log())
        for chunk in chunks:
            await log.add(flow, chunk)

    async def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]:
        log = self._flows.setdefault(flow, _Log())

        async def arrivals() -> AsyncIterator[bytes]:
            seq = 1
            while True:
                while (entry := log.first_from(seq, ())) is None:
                    await log.wait_change(0.05)
                seq += 1
                yield entry.data

        async for chunk in first_chunks(arrivals(), flow, count, timeout):
            yield chunk


def _logged(entry: _Entry) -> Logged:
    return entry_of(entry.seq, entry.subject, entry.data)
