"""A consumer that keeps itself subscribed, on a channel of its own, across lost
connections and channels.

aio-pika's robust channels reopen after a reconnect, but a channel the broker
closes while it is being restored (a queue whose home node is still starting, say)
is not reopened again, and a subscription made on the channel underneath is not
restored at all. So every subscriber here owns a plain channel of the current
connection, watches it close (or the broker cancel its consumer), and subscribes
again on a new one once the connection is back: from where it was, which each
subscriber decides.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from asyncio import FIRST_COMPLETED

import aiormq.abc
import structlog
from aio_pika.abc import AbstractRobustConnection

from shared.tasks import cancel_and_wait

log = structlog.get_logger("vplane.bus.rabbit")

RawChannel = aiormq.abc.AbstractChannel
RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0


class Subscriber(ABC):
    def __init__(self, conn: AbstractRobustConnection, queue: str, prefetch: int) -> None:
        self._conn = conn
        self.queue_name = queue
        self._prefetch = prefetch
        self._subscription: tuple[RawChannel, str] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._cancelled = asyncio.Event()

    @abstractmethod
    async def _consume(self, raw: RawChannel) -> str:
        """Subscribe on ``raw``; return the consumer tag."""

    async def _subscribe(self) -> None:
        await self._conn.connected.wait()
        transport = self._conn.transport
        if transport is None:
            raise ConnectionError("no connection to RabbitMQ")
        raw = await transport.connection.channel(publisher_confirms=False)
        try:
            await raw.basic_qos(prefetch_count=self._prefetch)
            tag = await self._consume(raw)
        except BaseException:
            with contextlib.suppress(Exception):
                await raw.close()
            raise
        self._subscription = (raw, tag)
        self._cancelled.clear()

        def on_cancel(frame: aiormq.spec.Basic.Cancel) -> None:
            # The broker ended the subscription (its queue went, or moved): start over.
            if frame.consumer_tag == tag:
                self._cancelled.set()

        raw.on_consumer_cancel_callbacks.add(on_cancel)

    async def subscribe(self) -> None:
        """Subscribe now, then keep subscribed until stopped."""
        await self._subscribe()
        self._keeper = asyncio.create_task(self._keep(), name=f"keep-{self.queue_name}")

    async def _keep(self) -> None:
        delay = RETRY_DELAY
        while True:
            if self._subscription is not None:
                raw = self._subscription[0]
                cancelled = asyncio.ensure_future(self._cancelled.wait())
                try:
                    await asyncio.wait([raw.closing, cancelled], return_when=FIRST_COMPLETED)
                finally:
                    cancelled.cancel()
                log.info("subscription lost; subscribing again", queue=self.queue_name)
                with contextlib.suppress(Exception):
                    await raw.close()
            try:
                await self._subscribe()
                delay = RETRY_DELAY
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self._subscription = None
                log.warning("subscribe failed; retrying", queue=self.queue_name, error=repr(err))
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def cancel(self) -> None:
        """Stop resubscribing and cancel the consumer. A stream forgets a consumer whose
        channel merely closes only when the broker next collects its garbage."""
        if self._keeper is not None:
            await cancel_and_wait(self._keeper)
        if self._subscription is not None and not self._subscription[0].is_closed:
            raw, tag = self._subscription
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await raw.basic_cancel(tag)

    async def close(self) -> None:
        if self._subscription is not None and not self._subscription[0].is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._subscription[0].close()
