"""A durable consumer on a RabbitMQ quorum queue, with the same outcomes as on NATS."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING

import aiormq.exceptions
import structlog
from aiormq.abc import DeliveredMessage

from shared.bus.dedupe import RecentIds
from shared.bus.dispatch import Bury, Outcome, Retry, dispatch, together
from shared.bus.errors import BusError
from shared.bus.protocol import ConsumerSpec, Delivery, Handler, Stream
from shared.bus.rabbit_batch import selected, unpack
from shared.bus.rabbit_channels import RawChannel, Subscriber
from shared.tasks import cancel_and_wait

if TYPE_CHECKING:
    from shared.bus.rabbit import RabbitBus

log = structlog.get_logger("vplane.bus.rabbit")

ACK_EVERY = 64
_SETTLE_ERRORS = (BusError, aiormq.exceptions.AMQPError, ConnectionError)


class QueueConsumer(Subscriber):
    def __init__(self, bus: RabbitBus, spec: ConsumerSpec, handler: Handler) -> None:
        super().__init__(bus.conn, bus.topology.consumer_queue(spec.name), spec.batch)
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._patterns = bus.topology.patterns(spec.stream, spec.filters)
        self._seen = RecentIds()
        self._inbox: asyncio.Queue[tuple[DeliveredMessage, RawChannel]] = asyncio.Queue()
        # The newest delivery handled but not yet acknowledged: acks go out in groups.
        self._unacked: tuple[RawChannel, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        bus, spec, topo = self._bus, self._spec, self._bus.topology
        name = self.queue_name
        topo.declared.add(name)
        fresh = not await self._exists(f"{name}.ready")
        # Declared once on a channel of its own: the queue and its bindings are durable,
        # and nothing is declared again while the connection is being restored.
        channel = await bus.conn.channel()
        try:
            queue = await channel.declare_queue(
                name, durable=True, arguments=topo.consumer_arguments(spec), robust=False
            )
            exchange = topo.exchange_names[_EXCHANGES[spec.stream]]
            for pattern in topo.patterns(spec.stream, spec.filters):
                await queue.bind(exchange, topo.binding(pattern), robust=False)
            if fresh and spec.stream is Stream.EVENTS:
                await self._backfill()
            # Created only once the backfill is done: its absence means "backfill again".
            await channel.declare_queue(f"{name}.ready", durable=True, robust=False)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        self._task = asyncio.create_task(self._run(), name=f"consume-{spec.name}")
        await self.subscribe()

    async def _consume(self, raw: RawChannel) -> str:
        """After a lost channel, what was delivered and not acknowledged comes again,
        and what was handled already is recognised by id."""

        async def deliver(message: DeliveredMessage) -> None:
            self._inbox.put_nowait((message, raw))

        ok = await raw.basic_consume(self.queue_name, deliver)
        return ok.consumer_tag or ""

    async def _exists(self, queue: str) -> bool:
        probe = await self._bus.conn.channel()
        try:
            await probe.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        finally:
            with contextlib.suppress(Exception):
                await probe.close()
        return True

    async def _backfill(self) -> None:
        """A new consumer of events first gets the log from its start sequence; what
        reached its queue meanwhile is recognised by id and skipped."""
        spec = self._spec
        async for entry in self._bus.replay(from_seq=spec.start_seq, filters=spec.filters):
            for attempt in range(1, spec.max_deliver + 1):
                delivery = Delivery(entry.seq, attempt, entry.subject)
                outcome = await self._dispatch(entry.raw, delivery)
                if isinstance(outcome, Retry):
                    await asyncio.sleep(outcome.delay)
                    continue
                if isinstance(outcome, Bury):
                    await self._bus.bury(
                        spec.name, entry.subject, entry.raw, outcome.reason, attempt
                    )
                break

    async def _dispatch(self, raw: bytes, delivery: Delivery) -> Outcome:
        return await dispatch(
            raw,
            delivery,
            self._handler,
            max_deliver=self._spec.max_deliver,
            retry_delay=self._spec.retry_delay,
            seen=self._seen,
        )

    async def _run(self) -> None:
        handled = 0
        while True:
            taken = [await self._inbox.get()]
            if self._spec.in_flight > 1:
                # Deliveries arrive one callback at a time: let those on the wire queue up.
                await asyncio.sleep(0)
            while len(taken) < self._spec.in_flight and not self._inbox.empty():
                taken.append(self._inbox.get_nowait())
            self._idle.clear()
            try:
                # Settled in delivery order once all are handled: an acknowledgement covers
                # every earlier delivery, so none may go out while one is still in hand.
                results = await together(
                    [self._one(m, raw, alone=len(taken) == 1) for m, raw in taken]
                )
                for (message, raw), result in zip(taken, results, strict=True):
                    if isinstance(result, _SETTLE_ERRORS):
                        # Not acknowledged: the broker delivers it again.
                        log.warning(
                            "could not settle message", consumer=self._spec.name, error=repr(result)
                        )
                    elif isinstance(result, BaseException):
                        raise result
                    elif result:
                        await self._settle(raw, message.delivery_tag or 0)
                handled += len(taken)
                if self._inbox.empty() or handled % ACK_EVERY < len(taken):
                    await self._flush_acks()
            except _SETTLE_ERRORS as err:
                log.warning("could not settle message", consumer=self._spec.name, error=repr(err))
            finally:
                self._idle.set()

    async def _flush_acks(self) -> None:
        if self._unacked is not None:
            raw, tag = self._unacked
            self._unacked = None
            # On a closed channel there is nothing to acknowledge: the broker has put
            # those messages back, and they are recognised by id when they come again.
            if not raw.is_closed:
                await raw.basic_ack(tag, multiple=True)

    async def _one(self, message: DeliveredMessage, raw: RawChannel, *, alone: bool) -> bool:
        """Handle a delivery; True when it is to be acknowledged (it was handed back
        otherwise)."""
        spec = self._spec
        props = message.header.properties
        headers = props.headers or {}
        count = headers.get("x-delivery-count", 0)
        attempt = (count if isinstance(count, int) else 0) + 1
        batch = unpack(message.routing_key or "", props.message_id or "", headers, message.body)
        if batch.expected and not await self._bus.accepted(batch.ids[0]):
            # A conditional batch the log refused: nobody sees it.
            return True
        for subject, body, msg_id in zip(batch.subjects, batch.bodies, batch.ids, strict=True):
            if len(batch.ids) > 1 and not selected(subject, self._patterns):
                continue
            # A queue has no log position: seq 0; consumers recognise repeats by message id.
            delivery = Delivery(0, attempt, subject)
            if attempt > spec.max_deliver:
                outcome: Outcome = Bury(f"delivered {attempt} times without an outcome")
            else:
                outcome = await self._dispatch(body, delivery)
            if isinstance(outcome, Retry):
                # The whole message comes back; the events handled are known by id.
                if alone:
                    await self._flush_acks()
                await asyncio.sleep(outcome.delay)
                await raw.basic_nack(message.delivery_tag or 0, multiple=False, requeue=True)
                return False
            if isinstance(outcome, Bury):
                log.warning("dead-lettered", consumer=spec.name, reason=outcome.reason[:200])
                await self._bus.bury(spec.name, subject, body, outcome.reason, attempt)
                with contextlib.suppress(ValueError):
                    self._seen.add(uuid.UUID(msg_id))
        return True

    async def _settle(self, raw: RawChannel, tag: int) -> None:
        if self._unacked is not None and self._unacked[0] is not raw:
            await self._flush_acks()
        self._unacked = (raw, tag)

    async def stop(self) -> None:
        await self.cancel()
        # Let the message in hand finish and be acknowledged; the rest go back.
        await self._idle.wait()
        if self._task is not None:
            await cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            await self._flush_acks()
        while not self._inbox.empty():
            message, raw = self._inbox.get_nowait()
            with contextlib.suppress(Exception):
                await raw.basic_nack(message.delivery_tag or 0, requeue=True)
        await self.close()


_EXCHANGES = {Stream.EVENTS: "events", Stream.COMMANDS: "commands", Stream.TELEMETRY: "telemetry"}
