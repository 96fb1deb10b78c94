"""Reading RabbitMQ streams: followers that deliver in offset order, and the log index.

A RabbitMQ stream has offsets but no server-side dedupe, no conditional append and
no way to ask where its end is over AMQP 0.9.1. The index follows the event log
and answers those questions client-side: the sequence of each appended id, the
version of each aggregate, and where the log ends (found by a marker message
routed into the stream and read back).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiormq.abc
import structlog
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

from shared.bus.dedupe import DEFAULT_WINDOW

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


class StreamFollower:
    """Consume a stream from an offset and hand each message over in order, once.

    It consumes on the channel underneath aio-pika (no per-message wrapper objects)
    and, after a reconnect, subscribes again from the next offset it has not seen.
    """

    def __init__(self, channel: AbstractChannel, queue: str, on_message: OnMessage) -> None:
        self._channel = channel
        self._queue_name = queue
        self._on_message = on_message
        self._inbox: asyncio.Queue[tuple[DeliveredMessage, aiormq.abc.AbstractChannel]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        self._start: int | str = 0
        self.last_offset = -1

    async def start(self, offset: int | str, prefetch: int = 1000) -> None:
        self._start = offset
        await self._channel.set_qos(prefetch_count=prefetch)
        self._task = asyncio.create_task(self._run())
        reopened = getattr(self._channel, "reopen_callbacks", None)
        if reopened is not None:
            reopened.add(self._resubscribe)
        await self._subscribe(offset)

    async def _subscribe(self, offset: int | str) -> None:
        raw = await self._channel.get_underlay_channel()

        async def deliver(message: DeliveredMessage) -> None:
            self._inbox.put_nowait((message, raw))

        await raw.basic_consume(self._queue_name, deliver, arguments={"x-stream-offset": offset})

    async def _resubscribe(self, *_: object) -> None:
        await self._subscribe(self.last_offset + 1 if self.last_offset >= 0 else self._start)

    async def _run(self) -> None:
        pending = 0
        while True:
            message, raw = await self._inbox.get()
            headers = dict(message.header.properties.headers or {})
            found = headers.get("x-stream-offset")
            offset = found if isinstance(found, int) else -1
            try:
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
                log.warning("stream message not handled", queue=self._queue_name, exc_info=True)
            pending += 1
            if pending >= ACK_EVERY or self._inbox.empty():
                pending = 0
                with contextlib.suppress(Exception):
                    await raw.basic_ack(message.delivery_tag or 0, multiple=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._channel.close()


class LogIndex:
    """What the event log holds, as far as it has been read: ids, versions, its end."""

    def __init__(self, publish_marker: Callable[[str], Awaitable[None]]) -> None:
        self._publish_marker = publish_marker
        self.ids: OrderedDict[str, int] = OrderedDict()
        self.versions: dict[str, int] = {}
        self.last_event_seq = 0
        self._waiting: dict[str, asyncio.Future[int]] = {}

    async def on_message(self, msg: StreamMessage) -> None:
        seq = msg.offset + 1
        if msg.is_marker:
            self._resolve(f"marker:{msg.headers[MARKER_HEADER]}", seq)
            return
        msg_id = msg.message_id
        self.versions[msg.routing_key] = seq
        self.last_event_seq = seq
        if msg_id and msg_id not in self.ids:
            self.ids[msg_id] = seq
            if len(self.ids) > DEFAULT_WINDOW:
                self.ids.popitem(last=False)
        self._resolve(msg_id, self.ids.get(msg_id, seq))

    def _resolve(self, key: str, seq: int) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(seq)

    def expect(self, msg_id: str) -> asyncio.Future[int]:
        """A future for the sequence of a message about to be published."""
        future = self._waiting.get(msg_id)
        if future is None:
            future = self._waiting[msg_id] = asyncio.get_running_loop().create_future()
        return future

    async def sync(self, timeout: float) -> int:
        """Read the log up to now: publish a marker and wait until it is read back.
        Returns the marker's sequence; every event before it is in the index."""
        key = uuid.uuid4().hex
        future = self.expect(f"marker:{key}")
        await self._publish_marker(key)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(f"marker:{key}", None)
