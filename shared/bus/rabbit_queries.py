"""Queries over RabbitMQ: request with direct reply-to, answered by competing servers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiormq.exceptions
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from schemas import Envelope, Message
from shared.bus.dispatch import answer, read_reply
from shared.bus.errors import RequestFailed
from shared.bus.protocol import QueryHandler
from shared.bus.rabbit_channels import RawChannel, Subscriber

REPLY_TO = "amq.rabbitmq.reply-to"
# Queries answered at once by one server.
SERVER_PREFETCH = 32


class Requester:
    """Sends queries on a channel of its own and matches replies by correlation id.

    Direct reply-to is a consumer of the channel that publishes the request; a lost
    channel takes it along, so a new one is opened (and listened on) when needed."""

    def __init__(self, conn: AbstractRobustConnection, publish_timeout: float) -> None:
        self._conn = conn
        self._timeout = publish_timeout
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._raw: RawChannel | None = None
        self._opening = asyncio.Lock()

    async def _channel(self) -> RawChannel:
        async with self._opening:
            if self._raw is None or self._raw.is_closed:
                transport = self._conn.transport
                if transport is None or transport.connection.is_closed:
                    raise RequestFailed("not connected to RabbitMQ")
                raw = await transport.connection.channel(publisher_confirms=True)
                await raw.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
                self._raw = raw
            return self._raw

    async def _on_reply(self, message: DeliveredMessage) -> None:
        future = self._replies.get(message.header.properties.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(message.body)

    async def request(self, queue: str, env: Envelope[Any], timeout: float) -> Envelope[Message]:
        correlation = uuid.uuid4().hex
        future = self._replies[correlation] = asyncio.get_running_loop().create_future()
        properties = aiormq.spec.Basic.Properties(correlation_id=correlation, reply_to=REPLY_TO)
        try:
            raw = await asyncio.wait_for(self._channel(), self._timeout)
            # Mandatory: with no server, the query queue does not exist and we know at once.
            await asyncio.wait_for(
                raw.basic_publish(
                    env.encode(), routing_key=queue, properties=properties, mandatory=True
                ),
                self._timeout,
            )
            return read_reply(await asyncio.wait_for(future, timeout))
        except aiormq.exceptions.PublishError:
            raise RequestFailed(f"nobody answers queries to {env.subject}") from None
        except TimeoutError:
            raise RequestFailed(f"no answer to {env.type} within {timeout}s") from None
        except (aiormq.exceptions.AMQPError, ConnectionError) as err:
            raise RequestFailed(f"query {env.type} failed: {err!r}") from None
        finally:
            self._replies.pop(correlation, None)

    async def close(self) -> None:
        if self._raw is not None and not self._raw.is_closed:
            with contextlib.suppress(Exception):
                await self._raw.close()


class Server(Subscriber):
    """Answers the queries of one target from its queue, which goes away with its last
    server and is declared again with each subscription."""

    def __init__(
        self, conn: AbstractRobustConnection, queue: str, target: str, handler: QueryHandler
    ) -> None:
        super().__init__(conn, queue, prefetch=SERVER_PREFETCH)
        self._target = target
        self._handler = handler
        self._answering: set[asyncio.Task[None]] = set()

    async def _consume(self, raw: RawChannel) -> str:
        await raw.queue_declare(self.queue_name, auto_delete=True)

        async def on_request(message: DeliveredMessage) -> None:
            task = asyncio.create_task(self._answer(raw, message))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

        ok = await raw.basic_consume(self.queue_name, on_request)
        return ok.consumer_tag or ""

    async def _answer(self, raw: RawChannel, message: DeliveredMessage) -> None:
        props = message.header.properties
        body = await answer(self._handler, message.body, producer=self._target)
        with contextlib.suppress(aiormq.exceptions.AMQPError, ConnectionError):
            if props.reply_to:
                reply = aiormq.spec.Basic.Properties(correlation_id=props.correlation_id)
                await raw.basic_publish(body, routing_key=props.reply_to, properties=reply)
            await raw.basic_ack(message.delivery_tag or 0)

    async def stop(self) -> None:
        await self.cancel()
        if self._answering:
            await asyncio.wait(self._answering)
        await self.close()
