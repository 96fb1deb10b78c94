"""Reading RabbitMQ streams: followers that deliver in offset order, and the log index.

A RabbitMQ stream has offsets but no server-side dedupe, no conditional append and
no way to ask where its end is over AMQP 0.9.1. The index follows the event log
from its first offset and answers those questions client-side: the sequence of each
appended id, the version of each aggregate, whether a conditional batch held at its
place in the log, and where the log ends (found by a marker message routed into the
stream and read back).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from shared.bus.dedupe import DEFAULT_WINDOW
from shared.bus.rabbit_batch import Batch, seq_of, unpack
from shared.bus.rabbit_channels import RawChannel, Subscriber
from shared.tasks import cancel_and_wait

log = structlog.get_logger("vplane.bus.rabbit")

MARKER_HEADER = "x-vplane-marker"
# Acknowledge stream deliveries in groups: they only pace the flow of a stream.
ACK_EVERY = 200


@dataclass(frozen=True, slots=True)
class StreamMessage:
    offset: int
    routing_key: str
    message_id: str
    headers: dict[str, Any]
    body: bytes

    @property
    def is_marker(self) -> bool:
        return MARKER_HEADER in self.headers


OnMessage = Callable[[StreamMessage], Awaitable[None]]


class StreamFollower(Subscriber):
    """Consume a stream from an offset and hand each message over in order, once.

    It consumes on a channel of its own (no per-message wrapper objects) and, when
    that channel is lost, subscribes again from the next offset it has not handed
    over: no gap, no repeat.
    """

    def __init__(self, conn: AbstractRobustConnection, queue: str, on_message: OnMessage) -> None:
        super().__init__(conn, queue, prefetch=1000)
        self._on_message = on_message
        self._inbox: asyncio.Queue[tuple[DeliveredMessage, RawChannel]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._start: int | str = 0
        self.last_offset = -1

    async def start(self, offset: int | str) -> None:
        self._start = offset
        self._task = asyncio.create_task(self._run())
        await self.subscribe()

    async def _consume(self, raw: RawChannel) -> str:
        offset = self.last_offset + 1 if self.last_offset >= 0 else self._start

        async def deliver(message: DeliveredMessage) -> None:
            self._inbox.put_nowait((message, raw))

        ok = await raw.basic_consume(
            self.queue_name, deliver, arguments={"x-stream-offset": offset}
        )
        return ok.consumer_tag or ""

    async def _run(self) -> None:
        pending = 0
        while True:
            message, raw = await self._inbox.get()
            headers = dict(message.header.properties.headers or {})
            found = headers.get("x-stream-offset")
            offset = found if isinstance(found, int) else -1
            try:
                # Deliveries of a lost channel may overlap those of the next one.
                if offset > self.last_offset:
                    self.last_offset = offset
                    await self._on_message(
                        StreamMessage(
                            offset,
                            message.routing_key or "",
                            message.header.properties.message_id or "",
                            headers,
                            message.body,
                        )
                    )
            except Exception:
                log.warning("stream message not handled", queue=self.queue_name, exc_info=True)
            pending += 1
            if pending >= ACK_EVERY or self._inbox.empty():
                pending = 0
                if not raw.is_closed:
                    with contextlib.suppress(Exception):
                        await raw.basic_ack(message.delivery_tag or 0, multiple=True)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        await self.cancel()
        await self.close()


async def read_stream(
    conn: AbstractRobustConnection,
    queue: str,
    offset: int,
    *,
    last: Callable[[StreamMessage], bool],
    timeout: float,
) -> AsyncIterator[StreamMessage]:
    """The messages of a stream from ``offset`` on, markers left out, up to (not
    including) the first for which ``last`` holds; waits up to ``timeout`` for each."""
    inbox: asyncio.Queue[StreamMessage | None] = asyncio.Queue()

    async def on_message(msg: StreamMessage) -> None:
        if last(msg):
            await inbox.put(None)
        elif not msg.is_marker:
            await inbox.put(msg)

    follower = StreamFollower(conn, queue, on_message)
    await follower.start(offset)
    try:
        while (msg := await asyncio.wait_for(inbox.get(), timeout)) is not None:
            yield msg
    finally:
        await follower.stop()


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the log took a message: appended at ``seq`` (its first event), a repeat of
    messages already there, or refused because an expectation (position, expected,
    actual) did not hold."""

    seq: int
    duplicate: bool = False
    conflict: tuple[int, int, int] | None = None


class LogIndex:
    """What the event log holds, as far as it has been read: ids, versions, its end,
    and which conditional batches it refused (see rabbit_batch)."""

    def __init__(self, publish_marker: Callable[[str], Awaitable[None]]) -> None:
        self._publish_marker = publish_marker
        self.ids: OrderedDict[str, int] = OrderedDict()
        self.versions: dict[str, int] = {}
        self.last_event_seq = 0
        self.last_offset = -1
        # Offsets (and first ids) of conditional batches every reader skips.
        self.skipped: set[int] = set()
        self.refused: dict[str, int] = {}
        self._waiting: dict[str, asyncio.Future[Verdict]] = {}
        self._reaching: list[tuple[int, asyncio.Future[None]]] = []

    async def on_message(self, msg: StreamMessage) -> None:
        if msg.is_marker:
            self._resolve(f"marker:{msg.headers[MARKER_HEADER]}", Verdict(seq_of(msg.offset)))
        else:
            batch = unpack(msg.routing_key, msg.message_id, msg.headers, msg.body)
            self._resolve(msg.message_id, self._judge(msg.offset, batch))
        self.last_offset = msg.offset
        if self._reaching:
            self._wake()

    def _judge(self, offset: int, batch: Batch) -> Verdict:
        """Decide a message at its place in the log; the same in every process."""
        known = [self.ids[i] for i in batch.ids if i in self.ids]
        if known:
            self._skip(offset, batch)
            return Verdict(known[0], duplicate=True)
        base = seq_of(offset)
        # Checked against the versions as the batch itself moves them, as JetStream does.
        moved: dict[str, int] = {}
        for pos, subject in enumerate(batch.subjects):
            current = moved.get(subject, self.versions.get(subject, 0))
            want = batch.expected.get(pos)
            if want is not None and want != current:
                self._skip(offset, batch)
                self.refused[batch.ids[0]] = offset
                return Verdict(0, conflict=(pos, want, current))
            moved[subject] = base + pos
        self.versions.update(moved)
        for pos, msg_id in enumerate(batch.ids):
            if msg_id:
                self.ids[msg_id] = base + pos
        while len(self.ids) > DEFAULT_WINDOW:
            self.ids.popitem(last=False)
        self.last_event_seq = base + len(batch.ids) - 1
        return Verdict(base)

    def _skip(self, offset: int, batch: Batch) -> None:
        # Only conditional batches: readers consult the index for those alone.
        if batch.expected:
            self.skipped.add(offset)

    def _resolve(self, key: str, verdict: Verdict) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(verdict)

    def _wake(self) -> None:
        waiting = []
        for offset, future in self._reaching:
            if offset <= self.last_offset:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((offset, future))
        self._reaching = waiting

    def expect(self, msg_id: str) -> asyncio.Future[Verdict]:
        """A future for the verdict on a message about to be published."""
        future = self._waiting.get(msg_id)
        if future is None:
            future = self._waiting[msg_id] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, msg_id: str) -> None:
        self._waiting.pop(msg_id, None)

    async def reached(self, offset: int) -> None:
        """Wait until the index has read the log up to ``offset``."""
        if offset <= self.last_offset:
            return
        future = asyncio.get_running_loop().create_future()
        self._reaching.append((offset, future))
        await future

    async def sync(self, timeout: float) -> int:
        """Read the log up to now: publish a marker and wait until it is read back.
        Returns the marker's sequence; every event before it is in the index."""
        key = f"marker:{uuid.uuid4().hex}"
        future = self.expect(key)
        await self._publish_marker(key.removeprefix("marker:"))
        try:
            return (await asyncio.wait_for(future, timeout)).seq
        finally:
            self.forget(key)
