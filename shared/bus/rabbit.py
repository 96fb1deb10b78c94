"""The RabbitMQ adapter: events in a stream behind a topic exchange, commands and
durable consumers on quorum queues, dead letters through a dead-letter exchange.

RabbitMQ has no server-side deduplication and no conditional append. Every append
is one stream message (a batch of one or more events, see rabbit_batch), so it
lands whole; expected versions ride on the message and the log index of every
client judges them in log order, the same way everywhere: the first writer wins,
a refused batch is skipped by every reader, and its writer learns it from its own
index. An id already in the index is not appended again; duplicates that still
reach the log are skipped by every reader and consumer by message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractRobustConnection,
)

from schemas import Envelope, Message
from shared.bus import subjects
from shared.bus.dedupe import unique
from shared.bus.errors import BusError, BusUnavailable, ConcurrencyError
from shared.bus.flows import windows
from shared.bus.protocol import (
    BATCH_LIMIT,
    AppendResult,
    ConsumerSpec,
    DeadLetter,
    Handler,
    Logged,
    QueryHandler,
    Stream,
    Subscription,
    WatchHandler,
)
from shared.bus.rabbit_batch import Batch, events_of, offset_of, pack, unpack
from shared.bus.rabbit_consumer import QueueConsumer
from shared.bus.rabbit_data import read_flow
from shared.bus.rabbit_log import (
    MARKER_HEADER,
    LogIndex,
    StreamFollower,
    StreamMessage,
    Verdict,
    read_stream,
)
from shared.bus.rabbit_queries import Requester, Server
from shared.bus.rabbit_topology import (
    H_CONSUMER,
    H_COUNT,
    H_REASON,
    H_SUBJECT,
    Topology,
    death_reason,
    header_int,
)

log = structlog.get_logger("vplane.bus.rabbit")

_CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    TimeoutError,
)


class Unroutable(BusError):
    """A message no queue would receive: nothing has ever subscribed to its subject."""


class RabbitBus:
    def __init__(
        self,
        url: str,
        namespace: str = "vplane",
        *,
        client_name: str = "vplane",
        connect_timeout: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.topology = Topology(namespace)
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._timeout = publish_timeout
        self._conn: AbstractRobustConnection | None = None
        self._confirmed: AbstractChannel | None = None
        self._fast: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._index: LogIndex | None = None
        self._index_lock = asyncio.Lock()
        self._subs: list[Subscription] = []
        self._queries: Requester | None = None
        self._connected = False

    @property
    def available(self) -> bool:
        return self._connected and self._conn is not None and not self._conn.is_closed

    def _lost(self, *_: object) -> None:
        if self._connected:
            log.warning("connection to RabbitMQ lost; reconnecting", client=self._client_name)
        self._connected = False

    def _restored(self, *_: object) -> None:
        # Called once every channel has been reopened and every subscription restored.
        log.info("connection to RabbitMQ restored", client=self._client_name)
        self._connected = True

    @property
    def conn(self) -> AbstractRobustConnection:
        if self._conn is None:
            raise BusError("the bus is not started")
        return self._conn

    async def start(self) -> None:
        try:
            self._conn = await asyncio.wait_for(
                aio_pika.connect_robust(
                    self.url,
                    client_properties={"connection_name": self._client_name},
                    reconnect_interval=1,
                ),
                self._connect_timeout,
            )
        except TimeoutError as err:
            raise BusUnavailable(
                f"cannot reach RabbitMQ at {_redacted(self.url)} within {self._connect_timeout:g}s"
            ) from err
        except (OSError, aiormq.exceptions.AMQPError) as err:
            raise BusUnavailable(
                f"cannot connect to RabbitMQ at {_redacted(self.url)}: {err or type(err).__name__}"
            ) from err
        self._conn.close_callbacks.add(self._lost)
        self._conn.reconnect_callbacks.add(self._restored)
        self._connected = True
        self._confirmed = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        # Telemetry is a time series: a lost sample is replaced by the next one.
        self._fast = await self._conn.channel(publisher_confirms=False)
        self._exchanges = await self.topology.declare(self._confirmed)

    async def close(self) -> None:
        for sub in reversed(self._subs):
            await sub.stop()
        self._subs.clear()
        if self._queries is not None:
            await self._queries.close()
        self._connected = False  # a connection closed on purpose is not "lost"
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = self._confirmed = self._fast = self._index = self._queries = None

    async def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        msg_id: str | None = None,
        headers: dict[str, Any] | None = None,
        confirm: bool = True,
    ) -> None:
        message = aio_pika.Message(
            body,
            message_id=msg_id,
            headers=headers or {},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
        )
        target = self._exchanges[exchange]
        if not confirm:
            assert self._fast is not None
            target = await self._fast.get_exchange(target.name, ensure=False)
        try:
            # A timeout scope, not wait_for: no task per publish on the hot path.
            async with asyncio.timeout(self._timeout):
                await target.publish(message, routing_key, mandatory=confirm)
        except aiormq.exceptions.PublishError as err:
            raise Unroutable(f"no queue receives {routing_key}: nothing subscribes to it") from err
        except _CONNECTION_ERRORS as err:
            raise BusUnavailable(f"publish to {routing_key} failed: {err!r}") from err

    async def _log_index(self) -> LogIndex:
        """The event log's index, built on first use by reading the log to its end."""
        async with self._index_lock:
            if self._index is None:
                index = LogIndex(self._publish_marker)
                follower = StreamFollower(self.conn, self.topology.log, index.on_message)
                await follower.start(0)
                self._subs.append(follower)
                await index.sync(timeout=max(self._timeout, 60))
                self._index = index
            return self._index

    async def _publish_marker(self, key: str) -> None:
        await self._publish(
            "events", self.topology.marker_key(key), b"", headers={MARKER_HEADER: key}
        )

    async def append(
        self, env: Envelope[Any], *, expected_version: int | None = None
    ) -> AppendResult:
        expected = {} if expected_version is None else {0: expected_version}
        return (await self.append_batch([env], expected=expected))[0]

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        if len(envs) > BATCH_LIMIT:
            raise BusError(f"a batch holds at most {BATCH_LIMIT} events, not {len(envs)}")
        if not envs:
            return []
        expected = dict(expected or {})
        index = await self._log_index()
        if any(str(env.id) in index.ids for env in envs):
            return _duplicates(index, envs)
        self._check_known(index, envs, expected)
        packed = pack(self.namespace, envs, expected)
        verdict = index.expect(packed.msg_id)
        try:
            await self._publish(
                "events",
                packed.routing_key,
                packed.body,
                msg_id=packed.msg_id,
                headers=packed.headers,
            )
            # The log decides, and this bus learns how from its own index.
            taken = await asyncio.wait_for(verdict, self._timeout)
        finally:
            index.forget(packed.msg_id)
        if taken.conflict is not None:
            pos, want, actual = taken.conflict
            raise ConcurrencyError(envs[pos].subject, want, actual)
        if taken.duplicate:
            return _duplicates(index, envs)
        return [AppendResult(taken.seq + i, duplicate=False) for i in range(len(envs))]

    def _check_known(
        self, index: LogIndex, envs: list[Envelope[Any]], expected: Mapping[int, int]
    ) -> None:
        """Refuse at once what the log is sure to refuse: a version the index already
        knows is past the expected one (versions only grow). Anything else goes to the
        log, which decides."""
        seen = set()
        for pos, env in enumerate(envs):
            subject = subjects.event_subject(self.namespace, env)
            want = expected.get(pos)
            if want is not None and subject not in seen:
                current = index.versions.get(subject, 0)
                if current > want:
                    raise ConcurrencyError(env.subject, want, current)
            seen.add(subject)

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        index = await self._log_index()
        futures: dict[str, asyncio.Future[Verdict]] = {}
        sends = []
        for env in envs:
            msg_id = str(env.id)
            if msg_id in index.ids or msg_id in futures:
                continue
            futures[msg_id] = index.expect(msg_id)
            subject = subjects.event_subject(self.namespace, env)
            sends.append(self._publish("events", subject, env.encode(), msg_id=msg_id))
        await asyncio.gather(*sends)
        results = []
        firsts: set[str] = set()
        for env in envs:
            msg_id = str(env.id)
            if msg_id in futures and msg_id not in firsts:
                firsts.add(msg_id)
                taken = await asyncio.wait_for(futures[msg_id], self._timeout)
                results.append(AppendResult(taken.seq, duplicate=taken.duplicate))
            else:
                results.append(AppendResult(index.ids.get(msg_id, 0), duplicate=True))
        return results

    async def accepted(self, msg_id: str) -> bool:
        """Whether the log took the conditional batch whose first id is ``msg_id``, for
        readers that do not know its offset (queue consumers)."""
        index = await self._log_index()
        if msg_id not in index.ids and msg_id not in index.refused:
            await index.sync(self._timeout)
        # Neither taken nor refused after a sync: older than the index remembers.
        return msg_id in index.ids or msg_id not in index.refused

    async def _taken(self, offset: int, batch: Batch) -> bool:
        """Whether the log took the message at ``offset``: a conditional batch only if
        its expectations held there."""
        if not batch.expected:
            return True
        index = await self._log_index()
        await index.reached(offset)
        return offset not in index.skipped

    async def version(self, aggregate: str) -> int:
        index = await self._log_index()
        await index.sync(self._timeout)
        return index.versions.get(subjects.aggregate_subject(self.namespace, aggregate), 0)

    async def last_seq(self) -> int:
        index = await self._log_index()
        await index.sync(self._timeout)
        return index.last_event_seq

    async def replay(
        self, *, from_seq: int = 1, filters: tuple[str, ...] = ()
    ) -> AsyncIterator[Logged]:
        end = await (await self._log_index()).sync(self._timeout)
        if from_seq >= end:
            return
        wanted = self.topology.patterns(Stream.EVENTS, filters)
        until = offset_of(end)
        messages = read_stream(
            self.conn,
            self.topology.log,
            offset_of(from_seq),
            last=lambda msg: msg.offset >= until,
            timeout=5 * self._timeout,
        )
        async for entry in unique(self._entries(messages, wanted, from_seq)):
            yield entry

    async def _entries(
        self, messages: AsyncIterator[StreamMessage], patterns: tuple[str, ...], from_seq: int
    ) -> AsyncIterator[Logged]:
        async for msg in messages:
            for entry in await self._expand(msg, patterns, from_seq):
                yield entry

    async def _expand(
        self, msg: StreamMessage, patterns: tuple[str, ...], from_seq: int = 0
    ) -> list[Logged]:
        """The events of a log message that a reader gets: those the log took, selected."""
        batch = unpack(msg.routing_key, msg.message_id, msg.headers, msg.body)
        if not await self._taken(msg.offset, batch):
            return []
        return events_of(msg.offset, batch, patterns, from_seq)

    async def send(self, env: Envelope[Any]) -> None:
        subject = subjects.command_subject(self.namespace, env)
        await self._publish("commands", subject, env.encode(), msg_id=str(env.id))

    async def send_many(self, envs: list[Envelope[Any]]) -> None:
        # Published in order on one channel; only the confirmations are awaited together.
        await asyncio.gather(
            *(
                self._publish(
                    "commands",
                    subjects.command_subject(self.namespace, env),
                    env.encode(),
                    msg_id=str(env.id),
                )
                for env in envs
            )
        )

    async def emit(self, env: Envelope[Any]) -> None:
        subject = subjects.telemetry_subject(self.namespace, env)
        await self._publish("telemetry", subject, env.encode(), msg_id=str(env.id), confirm=False)

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        exchange = {
            Stream.EVENTS: "events",
            Stream.COMMANDS: "commands",
            Stream.TELEMETRY: "telemetry",
        }[stream]
        await self._publish(
            exchange, subjects.stream_subject(self.namespace, stream, subject), data
        )

    async def unclaimed(
        self,
        pattern: str,  # noqa: ARG002 - none waits here
        known: Callable[[str], bool],  # noqa: ARG002
        handler: Handler,  # noqa: ARG002
        *,
        older_than: float,  # noqa: ARG002
    ) -> int:
        # A command no queue is bound for is refused when it is sent (Unroutable, as the
        # publish is mandatory): none waits for a target nobody serves.
        return 0

    async def consume(self, spec: ConsumerSpec, handler: Handler) -> Subscription:
        consumer = QueueConsumer(self, spec, handler)
        await consumer.start()
        self._subs.append(consumer)
        return consumer

    async def bury(self, consumer: str, subject: str, body: bytes, reason: str, count: int) -> None:
        headers = {
            H_REASON: reason[:1000],
            H_COUNT: count,
            H_SUBJECT: subject,
            H_CONSUMER: consumer,
        }
        await self._publish("dlx", consumer, body, headers=headers)

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> Subscription:
        queue = {Stream.EVENTS: self.topology.log, Stream.TELEMETRY: self.topology.tel}.get(stream)
        if queue is None:
            raise BusError(f"RabbitMQ keeps no log of {stream.name.lower()} to watch")
        wanted = self.topology.patterns(stream, filters)
        start = 0 if from_seq is None else from_seq

        async def on_message(msg: StreamMessage) -> None:
            if msg.is_marker:
                return
            for entry in await self._expand(msg, wanted, start):
                try:
                    await handler(entry)
                except Exception:
                    log.exception("watch handler failed", subject=entry.subject)

        offset: int | str = "next" if from_seq is None else offset_of(from_seq)
        if from_seq is None and stream is Stream.EVENTS:
            # "Now" as a place in the log, so that a reconnect before the first event
            # resumes from there rather than from whatever "now" is by then.
            offset = offset_of(await (await self._log_index()).sync(self._timeout))
        follower = StreamFollower(self.conn, queue, on_message)
        await follower.start(offset)
        self._subs.append(follower)
        return follower

    async def request(self, env: Envelope[Any], *, timeout: float = 5.0) -> Envelope[Message]:
        if self._queries is None:
            self._queries = Requester(self.conn, self._timeout)
        return await self._queries.request(self.topology.query_queue(env.subject), env, timeout)

    async def serve(self, target: str, handler: QueryHandler) -> Subscription:
        server = Server(self.conn, self.topology.query_queue(target), target, handler)
        await server.subscribe()
        self._subs.append(server)
        return server

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        key = uuid.uuid4().hex
        await self._publish("dlx", self.topology.marker_key(key), b"", headers={MARKER_HEADER: key})
        out = []
        entries = read_stream(
            self.conn,
            self.topology.dlq,
            0,
            last=lambda msg: msg.headers.get(MARKER_HEADER) == key,
            timeout=5 * self._timeout,
        )
        async for entry in entries:
            h = entry.headers or {}
            if entry.routing_key != consumer:
                continue
            reason = str(h.get(H_REASON) or death_reason(h))
            count = header_int(h.get(H_COUNT) or h.get("x-delivery-count"))
            out.append(DeadLetter(consumer, str(h.get(H_SUBJECT, "")), reason, count, entry.body))
        return out

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        assert self._confirmed is not None
        await self.topology.declare_data(self._confirmed, flow)
        for window in windows(chunks):
            await asyncio.gather(*(self._publish("data", flow, chunk) for chunk in window))

    def read_data(self, flow: str, count: int, *, timeout: float = 30.0) -> AsyncIterator[bytes]:
        return read_flow(self.conn, self.topology, flow, count, timeout)


async def delete_namespace(bus: RabbitBus, consumers: Iterable[str] = ()) -> None:
    """Remove a namespace's queues and exchanges: for tests and tools, never services."""
    channel = await bus.conn.channel()
    try:
        await bus.topology.delete_all(channel, consumers)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


def _duplicates(index: LogIndex, envs: list[Envelope[Any]]) -> list[AppendResult]:
    return [AppendResult(index.ids.get(str(env.id), 0), duplicate=True) for env in envs]


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
