"""The NATS adapter's readers: durable pull consumers, followers, query servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from shared.bus.dedupe import RecentIds
from shared.bus.dispatch import Ack, Bury, Retry, dispatch, entry_of
from shared.bus.errors import BusError, BusUnavailable
from shared.bus.protocol import ConsumerSpec, Delivery, Handler, Logged, WatchHandler

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus

log = structlog.get_logger("vplane.bus.nats")


class Puller:
    """One durable pull consumer's loop."""

    def __init__(
        self,
        bus: NatsBus,
        spec: ConsumerSpec,
        handler: Handler,
        sub: JetStreamContext.PullSubscription,
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._sub = sub
        self._stopping = False
        self._fetching = False
        self._seen = RecentIds()
        self._task = asyncio.create_task(self._run(), name=f"consume-{spec.name}")

    async def _run(self) -> None:
        spec = self._spec
        while not self._stopping:
            self._fetching = True
            try:
                msgs = await self._sub.fetch(spec.batch, timeout=1.0)
            except TimeoutError:  # nats-py raises its own and asyncio's; both are this
                continue
            except (nats.errors.Error, OSError) as err:
                # Disconnected or the broker is restarting: the client reconnects, we wait.
                log.warning("fetch failed, retrying", consumer=spec.name, error=repr(err))
                await asyncio.sleep(0.5)
                continue
            finally:
                self._fetching = False
            for i, msg in enumerate(msgs):
                if self._stopping:
                    # Hand back what this instance will not handle, for the next one.
                    for rest in msgs[i:]:
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    break
                try:
                    await self._one(msg)
                except (BusError, nats.errors.Error, OSError) as err:
                    # Not acknowledged: the broker redelivers it after ack_wait.
                    log.warning("could not settle message", consumer=spec.name, error=repr(err))

    async def _one(self, msg: Msg) -> None:
        meta = msg.metadata
        attempt = int(meta.num_delivered)
        delivery = Delivery(int(meta.sequence.stream), attempt, msg.subject)
        if attempt > self._spec.max_deliver:
            # Delivered more often than allowed: a handler crashed the process on it.
            outcome: Ack | Retry | Bury = Bury(f"delivered {attempt} times without an outcome")
        else:
            outcome = await dispatch(
                msg.data,
                delivery,
                self._handler,
                max_deliver=self._spec.max_deliver,
                retry_delay=self._spec.retry_delay,
                seen=self._seen,
            )
        if isinstance(outcome, Retry):
            await msg.nak(delay=outcome.delay)
            return
        if isinstance(outcome, Bury):
            log.warning("dead-lettered", consumer=self._spec.name, reason=outcome.reason[:200])
            await self._bus.bury(self._spec.name, msg, outcome.reason, attempt)
        await msg.ack()

    async def stop(self) -> None:
        self._stopping = True
        if self._fetching:
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self._bus.nc.flush(timeout=5)
            await self._sub.unsubscribe()


class Watcher:
    def __init__(self, reader: AsyncIterator[Msg], handler: WatchHandler) -> None:
        self._reader = reader
        self._handler = handler
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self._reader:
            try:
                await self._handler(logged(msg))
            except Exception:
                # A watcher only observes; one bad callback must not end the follow.
                log.exception("watch handler failed", subject=msg.subject)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Server:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.drain()


async def messages(
    sub: JetStreamContext.PullSubscription, *, until: int | None
) -> AsyncGenerator[Msg, None]:
    """Messages of an ephemeral consumer in order; stop at ``until``, or follow forever."""
    try:
        if until is not None and (await sub.consumer_info()).num_pending == 0:
            return
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=1.0)
            except TimeoutError:  # nats-py raises its own and asyncio's; both are this
                if until is not None:
                    return
                continue
            except (nats.errors.Error, OSError) as err:
                if until is not None:
                    raise BusUnavailable(f"reading the stream failed: {err!r}") from err
                log.warning("follow failed, retrying", error=repr(err))
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                yield msg
                meta = msg.metadata
                if until is not None and (meta.sequence.stream >= until or meta.num_pending == 0):
                    return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def start_at(seq: int | None) -> dict[str, Any]:
    if seq is None:
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if seq <= 1:
        return {"deliver_policy": api.DeliverPolicy.ALL}
    return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": seq}


def logged(msg: Msg) -> Logged:
    return entry_of(int(msg.metadata.sequence.stream), msg.subject, msg.data)
