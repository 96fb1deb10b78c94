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

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared.bus.dedupe import DEFAULT_WINDOW

log = structlog.get_logger("vplane.bus.rabbit")

MARKER_HEADER = "x-vplane-marker"
OnMessage = Callable[[int, AbstractIncomingMessage], Awaitable[None]]


class StreamFollower:
    """Consume a stream from an offset and hand each message over in order, once."""

    def __init__(self, channel: AbstractChannel, queue: str, on_message: OnMessage) -> None:
        self._channel = channel
        self._queue_name = queue
        self._on_message = on_message
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_offset = -1

    async def start(self, offset: int | str, prefetch: int = 1000) -> None:
        await self._channel.set_qos(prefetch_count=prefetch)
        self._queue = await self._channel.get_queue(self._queue_name, ensure=False)
        self._task = asyncio.create_task(self._run())
        # After a reconnect the consumer is restored with these same arguments and
        # reads again from here; offsets already handed over are skipped.
        self._tag = await self._queue.consume(
            self._inbox.put, arguments={"x-stream-offset": offset}
        )

    async def _run(self) -> None:
        while True:
            msg = await self._inbox.get()
            found = (msg.headers or {}).get("x-stream-offset")
            offset = found if isinstance(found, int) else -1
            try:
                if offset > self.last_offset:
                    self.last_offset = offset
                    await self._on_message(offset, msg)
                await msg.ack()
            except Exception:
                log.warning("stream message not handled", queue=self._queue_name, exc_info=True)

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

    async def on_message(self, offset: int, msg: AbstractIncomingMessage) -> None:
        seq = offset + 1
        key = str((msg.headers or {}).get(MARKER_HEADER) or "")
        if key:
            self._resolve(f"marker:{key}", seq)
            return
        msg_id = msg.message_id or ""
        self.versions[msg.routing_key or ""] = seq
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
