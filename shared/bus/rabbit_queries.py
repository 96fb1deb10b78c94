"""Queries over RabbitMQ: request with direct reply-to, answered by competing servers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustChannel

from schemas import Envelope, Message
from shared.bus.dispatch import answer, read_reply
from shared.bus.errors import RequestFailed
from shared.bus.protocol import QueryHandler

REPLY_TO = "amq.rabbitmq.reply-to"


class Requester:
    """Sends queries on one channel and matches replies by correlation id."""

    def __init__(self, channel: AbstractRobustChannel, publish_timeout: float) -> None:
        self._channel = channel
        self._timeout = publish_timeout
        self._replies: dict[str, asyncio.Future[bytes]] = {}
        self._listening = False
        # Direct reply-to is a consumer of the channel: a reopened channel has none.
        channel.reopen_callbacks.add(self._reopened)

    def _reopened(self, *_: object) -> None:
        self._listening = False

    async def _listen(self) -> None:
        queue = await self._channel.get_queue(REPLY_TO, ensure=False)

        async def on_reply(msg: AbstractIncomingMessage) -> None:
            future = self._replies.get(msg.correlation_id or "")
            if future is not None and not future.done():
                future.set_result(msg.body)

        await queue.consume(on_reply, no_ack=True)
        self._listening = True

    async def request(self, queue: str, env: Envelope[Any], timeout: float) -> Envelope[Message]:
        if not self._listening:
            await self._listen()
        correlation = uuid.uuid4().hex
        future = self._replies[correlation] = asyncio.get_running_loop().create_future()
        message = aio_pika.Message(env.encode(), correlation_id=correlation, reply_to=REPLY_TO)
        try:
            # Mandatory: with no server, the query queue does not exist and we know at once.
            await asyncio.wait_for(
                self._channel.default_exchange.publish(message, queue, mandatory=True),
                self._timeout,
            )
            return read_reply(await asyncio.wait_for(future, timeout))
        except aiormq.exceptions.PublishError:
            raise RequestFailed(f"nobody answers queries to {env.subject}") from None
        except TimeoutError:
            raise RequestFailed(f"no answer to {env.type} within {timeout}s") from None
        finally:
            self._replies.pop(correlation, None)


class Server:
    """A subscription that ends by closing its channel."""

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.close()


async def serve(
    channel: AbstractChannel, queue_name: str, target: str, handler: QueryHandler
) -> Server:
    """Answer queries from ``queue_name``; the queue goes away with its last server."""
    queue = await channel.declare_queue(queue_name, auto_delete=True)

    async def on_request(msg: AbstractIncomingMessage) -> None:
        async with msg.process(ignore_processed=True):
            body = await answer(handler, msg.body, producer=target)
            if msg.reply_to:
                reply = aio_pika.Message(body, correlation_id=msg.correlation_id)
                await channel.default_exchange.publish(reply, msg.reply_to)

    await queue.consume(on_request)
    return Server(channel)
