"""The RabbitMQ half of the bus benchmark: raw aio-pika next to ``RabbitBus``.

The raw side builds what vplane's topology makes the broker do for one event: a
durable topic exchange routes each message both to a stream (the log) and to a
quorum queue (the consumer's). It publishes with confirms, ``mandatory=True``, a
chunk of publishes in flight at once, and consumes with ``queue.consume`` and
``message.ack()``. Every name is unique to the run and deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions
from _common import (
    SendBatch,
    Settings,
    Tally,
    VplaneSide,
    chunks,
    run_pair,
    unique_tag,
    vm_envelope,
)
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)

from shared.bus.rabbit import RabbitBus, delete_namespace

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def reachable(url: str) -> bool:
    """Whether something listens at the URL's host and port."""
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2),
    ):
        return True
    return False


class RawRabbit:
    """Plain aio-pika: topic exchange, stream + quorum queue, confirms, manual acks.

    With ``follow_log`` it also reads its log stream from its start, as every vplane
    process's log index does (a stream consumer with prefetch 1000): the control that
    shows what that reader costs the broker, with no vplane code on the path."""

    def __init__(
        self, url: str, payload: bytes, *, chunk: int, batch: int, follow_log: bool = False
    ) -> None:
        self.url = url
        self.follow_log = follow_log
        self.log_read = 0
        self.payload = payload
        self.chunk = chunk
        self.batch = batch
        self.tally = Tally()
        # message_id -> perf_counter() at publish, only while measuring latency.
        self.stamps: dict[str, float] = {}
        ns = f"benchraw{unique_tag()}"
        self.prefix = f"{ns}.evt"
        self.exchange_name = f"{ns}.events"
        self.stream_name = f"{ns}.log"
        self.queue_name = f"{ns}.q.bench-raw"
        self._conn: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._serial = 0

    async def start(self) -> None:
        self._conn = conn = await aio_pika.connect(
            self.url, client_properties={"connection_name": "bench-raw"}, timeout=5
        )
        publisher: AbstractChannel = await conn.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._exchange = await publisher.declare_exchange(
            self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        log = await publisher.declare_queue(
            self.stream_name, durable=True, arguments={"x-queue-type": "stream"}
        )
        await log.bind(self._exchange, f"{self.prefix}.#")
        consumer = await conn.channel()
        await consumer.set_qos(prefetch_count=self.batch)
        queue = await consumer.declare_queue(
            self.queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(self.exchange_name, f"{self.prefix}.vm.#")
        await queue.consume(self._on_message)
        if self.follow_log:
            reader = await conn.channel()
            await reader.set_qos(prefetch_count=1000)
            stream = await reader.declare_queue(
                self.stream_name, durable=True, arguments={"x-queue-type": "stream"}
            )
            await stream.consume(self._on_log, arguments={"x-stream-offset": "first"})

    async def _on_log(self, msg: AbstractIncomingMessage) -> None:
        # Acknowledged one by one, as vplane's reader does when nothing else is waiting
        # (which, at the latency runs' rate, is every time).
        self.log_read += 1
        await msg.ack()

    async def _on_message(self, msg: AbstractIncomingMessage) -> None:
        stamps = self.stamps
        if stamps:
            sent = stamps.pop(msg.message_id or "", None)
            if sent is not None:
                self.tally.latencies.append(time.perf_counter() - sent)
        await msg.ack()
        self.tally.hit()

    def prepare(self, count: int) -> list[tuple[str, str]]:
        """Distinct routing keys (one per aggregate, as vplane has) and uuid message ids."""
        self._serial += 1
        return [
            (f"{self.prefix}.vm.r{self._serial}-{i:06d}", str(uuid.uuid4())) for i in range(count)
        ]

    def _message(self, msg_id: str) -> aio_pika.Message:
        # The same properties as vplane's events carry.
        return aio_pika.Message(
            self.payload,
            message_id=msg_id,
            headers={},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            content_type="application/json",
        )

    async def publish(self, items: Sequence[tuple[str, str]]) -> None:
        exchange = self._exchange
        assert exchange is not None
        for part in chunks(len(items), self.chunk):
            await asyncio.gather(
                *(
                    exchange.publish(self._message(items[i][1]), items[i][0], mandatory=True)
                    for i in part
                )
            )

    def sender(self, items: Sequence[tuple[str, str]]) -> SendBatch:
        async def send(first: int, count: int) -> None:
            exchange, stamps = self._exchange, self.stamps
            assert exchange is not None
            now = time.perf_counter()
            sends = []
            for routing_key, msg_id in items[first : first + count]:
                stamps[msg_id] = now
                sends.append(exchange.publish(self._message(msg_id), routing_key, mandatory=True))
            await asyncio.gather(*sends)

        return send

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Closing the connection ends the consumer; the names are deleted through a fresh
        # one, which works even when an error has closed this one.
        with contextlib.suppress(Exception):
            await conn.close()
        cleaner = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await cleaner.channel()
            for queue in (self.queue_name, self.stream_name):
                with contextlib.suppress(aiormq.exceptions.AMQPError):
                    await channel.queue_delete(queue)
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(self.exchange_name)
        finally:
            await cleaner.close()


class RabbitVplane(VplaneSide):
    """``RabbitBus`` in a namespace of its own, deleted from the broker on close."""

    def __init__(self, url: str, *, chunk: int, batch: int) -> None:
        self.namespace = f"bench{unique_tag()}"
        self.rabbit_bus = RabbitBus(url, namespace=self.namespace, client_name="bench")
        super().__init__(self.rabbit_bus, chunk=chunk, batch=batch)
        self._started = self._closed = False

    async def start(self) -> None:
        self._started = True
        await super().start()

    async def close(self) -> None:
        if self._closed or not self._started:
            return
        self._closed = True
        try:
            await self.rabbit_bus.close()
        finally:
            # Deleted through a bus of its own once every consumer has stopped, so the
            # broker cancels no consumer under a deleted queue.
            cleaner = RabbitBus(self.rabbit_bus.url, self.namespace, client_name="bench-cleanup")
            await cleaner.start()
            try:
                await delete_namespace(cleaner, [self.spec.name])
            finally:
                await cleaner.close()


async def run_rabbitmq(url: str, opts: Settings) -> dict[str, Any]:
    """Both RabbitMQ sides against one broker; the figures as a JSON-ready dict."""
    payload = vm_envelope("v0", 0).encode()
    raw = RawRabbit(url, payload, chunk=opts.chunk, batch=opts.batch)
    control = RawRabbit(url, payload, chunk=opts.chunk, batch=opts.batch, follow_log=True)
    vplane = RabbitVplane(url, chunk=opts.chunk, batch=opts.batch)
    result = await run_pair(raw, vplane, opts, control=control)
    # What the control read back of its log: proof that its reader really ran.
    result["latency"]["control_log_read"] = control.log_read
    return {"url": shown_url(url)} | result


def shown_url(url: str) -> str:
    """The URL with its password hidden."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@") if password else url
