"""The NATS adapter's readers: durable pull consumers, followers, query servers.

Each of them outlives its broker: when the connection drops, the bus counts a new
generation; a reader that sees one waits until the bus is back with its streams, then
makes sure of its consumer (a durable) or makes a new one where it left off (a follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from shared.bus.dedupe import RecentIds
from shared.bus.dispatch import Ack, Bury, Retry, dispatch, entry_of, together
from shared.bus.errors import BusError, BusUnavailable
from shared.bus.protocol import ConsumerSpec, Delivery, Handler, Logged, WatchHandler
from shared.tasks import cancel_and_wait

if TYPE_CHECKING:
    from shared.bus.nats import NatsBus

log = structlog.get_logger("vplane.bus.nats")

# How long a reader waits before trying again after a failure it cannot fix itself.
RETRY_PAUSE = 0.5
# Errors that mean "the broker, or the connection to it, is not there right now"
# (a refusal too, which the caller tells apart: see ``bus_error``).
TRANSIENT = (TimeoutError, nats.errors.Error, OSError, BusError)


class Trouble:
    """A run of failures of one thing: the first is logged, then only the recovery with
    how many there were, so a broker away for minutes costs two lines, not thousands."""

    __slots__ = ("_context", "_what", "count")

    def __init__(self, what: str, **context: str) -> None:
        self._what = what
        self._context = context
        self.count = 0

    def failed(self, err: object) -> None:
        self.count += 1
        if self.count == 1:
            error = err if isinstance(err, str) else repr(err)
            log.warning(f"{self._what} failing", error=error, **self._context)

    def ok(self) -> None:
        if self.count:
            log.info(f"{self._what} works again", failures=self.count, **self._context)
            self.count = 0


# The most entries a follower takes in one fetch.
FOLLOW_BATCH = 1000
# How long the rest of a batch may take once its first message is in: the broker has
# said they are pending already.
REST_SECONDS = 0.05


async def fetch_ready(
    sub: JetStreamContext.PullSubscription, most: int, timeout: float = 1.0
) -> list[Msg]:
    """The next message, and as many of those pending behind it as ``most`` allows.

    Waiting for new messages, nats-py's fetch of N holds a first message that arrives
    until N have come or the pull expires (up to ``timeout``): a lone command or event
    could wait most of a second (measured: one in ten, up to 0.6 s). Fetched alone, the
    first is handed over at once; its metadata says how many more are pending, and a
    fetch of exactly those returns as soon as they are in."""
    msgs: list[Msg] = await sub.fetch(1, timeout=timeout)
    pending = min(int(msgs[-1].metadata.num_pending), most - 1)
    if pending > 0:
        with contextlib.suppress(TimeoutError):
            msgs += await sub.fetch(pending, timeout=REST_SECONDS)
    return msgs


class Puller:
    """One durable pull consumer's loop."""

    def __init__(
        self,
        bus: NatsBus,
        spec: ConsumerSpec,
        handler: Handler,
        stream: str,
        config: api.ConsumerConfig,
        sub: JetStreamContext.PullSubscription,
    ) -> None:
        self._bus = bus
        self._spec = spec
        self._handler = handler
        self._stream = stream
        self._config = config
        self._sub = sub
        self._generation = bus.generation
        self._stopping = False
        self._waiting = False
        self._seen = RecentIds()
        self._task = asyncio.create_task(self._run(), name=f"consume-{spec.name}")

    async def _run(self) -> None:
        spec = self._spec
        trouble = Trouble("fetch", consumer=spec.name)
        while not self._stopping:
            self._waiting = True
            try:
                if self._generation != self._bus.generation:
                    # The broker went away: a consumer of a memory stream went with it; a
                    # durable of a file stream is still there and resumes where it was.
                    self._generation = await self._bus.restored()
                    await self._bus.ensure_consumer(self._stream, self._config)
                msgs = await fetch_ready(self._sub, spec.batch)
            except TimeoutError:  # nats-py raises its own and asyncio's; both are this
                if self._bus.available:
                    trouble.ok()
                continue
            except TRANSIENT as err:
                # Its consumer is gone, or the broker is: make sure of it before fetching again.
                trouble.failed(err)
                self._generation = -1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            finally:
                self._waiting = False
            trouble.ok()
            step = max(spec.in_flight, 1)
            for i in range(0, len(msgs), step):
                if self._stopping:
                    # Hand back what this instance will not handle, for the next one.
                    for rest in msgs[i:]:
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    break
                settled = await together([self._one(msg) for msg in msgs[i : i + step]])
                for result in settled:
                    if isinstance(result, TRANSIENT):
                        # Not acknowledged: the broker redelivers it after ack_wait.
                        log.warning(
                            "could not settle message", consumer=spec.name, error=repr(result)
                        )
                    elif isinstance(result, BaseException):
                        raise result

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
        if not self._waiting:
            # Handling a fetched batch: it finishes, hands back the rest, and ends.
            await asyncio.wait([self._task])
        await cancel_and_wait(self._task)
        with contextlib.suppress(Exception):
            if self._bus.available:
                # Let the last acknowledgements reach the broker (not waited for while away).
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
        await cancel_and_wait(self._task)


class Server:
    """A query server: a plain subscription, which the client renews after a reconnect."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._sub.drain()


class Reader:
    """An ephemeral, unacknowledged consumer, read in order. After the connection drops
    (or a delivery goes missing), a new one is made from the entry after the last one
    read, so a follower neither skips nor repeats whatever the broker lost meanwhile."""

    def __init__(self, bus: NatsBus, stream: str, wanted: tuple[str, ...]) -> None:
        self._bus = bus
        self._stream = stream
        self._wanted = wanted
        self._sub: JetStreamContext.PullSubscription | None = None
        # The connection generation the consumer was made in; -1 asks for a new one.
        self._generation = -1
        # When the stream was created, as the consumer knew it: one made anew starts at 1.
        self._created: datetime.datetime | None = None
        # The stream sequence read last (at first, the one before the start), the
        # consumer sequence expected next, and how many matched when it was made.
        self._last = 0
        self._next = 1
        self._pending = 0

    async def open(self, from_seq: int | None) -> None:
        """Make the consumer: anything stored from here on will be read."""
        generation = self._bus.generation
        name = uuid.uuid4().hex
        config = api.ConsumerConfig(
            name=name,
            ack_policy=api.AckPolicy.NONE,
            filter_subjects=list(self._wanted),
            inactive_threshold=60,
            mem_storage=True,
            max_waiting=1,
            **start_at(from_seq),
        )
        info = await self._bus.js.add_consumer(self._stream, config)
        sub = await self._bus.js.pull_subscribe_bind(consumer=name, stream=self._stream)
        await self._drop()
        self._sub = sub
        self._generation = generation
        self._created = self._bus.stream_created(self._stream)
        delivered = info.delivered or api.SequenceInfo(consumer_seq=0, stream_seq=0)
        self._last = delivered.stream_seq
        self._next = delivered.consumer_seq + 1
        self._pending = info.num_pending or 0

    async def _reopen(self) -> None:
        await self._bus.restored()
        same_stream = self._bus.stream_created(self._stream) == self._created
        start = self._last + 1 if same_stream else 1
        await self.open(start)
        log.info("follow resumes", stream=self._stream, from_seq=start)

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def messages(self, *, until: int | None) -> AsyncGenerator[Msg, None]:
        """Stop at ``until`` (a read of the log up to there, which an outage fails with
        BusUnavailable), or follow forever, across outages."""
        trouble = Trouble("follow", stream=self._stream)
        try:
            if until is not None and (self._pending == 0 or self._last >= until):
                return
            while True:
                msgs = await (self._follow(trouble) if until is None else self._read())
                if msgs is None:
                    return
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.consumer != self._next:
                        # A delivery went missing (the connection dropped under it).
                        if until is not None:
                            raise BusUnavailable("a delivery was lost during a read")
                        self._generation = -1
                        break
                    self._next += 1
                    self._last = meta.sequence.stream
                    yield msg
                    if until is not None and (self._last >= until or meta.num_pending == 0):
                        return
        finally:
            await self._drop()

    async def _read(self) -> list[Msg] | None:
        """The next messages of a read up to an end, None past it; an outage fails it."""
        assert self._sub is not None
        if self._generation != self._bus.generation:
            raise BusUnavailable("the connection to NATS dropped during a read")
        try:
            return await self._sub.fetch(1000, timeout=1.0)
        except TimeoutError:  # nats-py raises its own and asyncio's; both are this
            if self._generation != self._bus.generation:
                raise BusUnavailable("the connection to NATS dropped during a read") from None
            return None
        except (nats.errors.Error, OSError) as err:
            raise BusUnavailable(f"reading the stream failed: {err!r}") from err

    async def _follow(self, trouble: Trouble) -> list[Msg]:
        """The next messages of a follow: none while there are none yet, or while the
        broker is away; after it, a new consumer from where this one was."""
        try:
            if self._generation != self._bus.generation:
                await self._reopen()
            assert self._sub is not None
            msgs = await fetch_ready(self._sub, FOLLOW_BATCH)
        except TimeoutError:
            return []
        except TRANSIENT as err:
            trouble.failed(err)
            self._generation = -1
            await asyncio.sleep(RETRY_PAUSE)
            return []
        trouble.ok()
        return msgs


def start_at(seq: int | None) -> dict[str, Any]:
    if seq is None:
        return {"deliver_policy": api.DeliverPolicy.NEW}
    if seq <= 1:
        return {"deliver_policy": api.DeliverPolicy.ALL}
    return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": seq}


def logged(msg: Msg) -> Logged:
    return entry_of(int(msg.metadata.sequence.stream), msg.subject, msg.data)
