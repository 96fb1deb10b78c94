"""The NATS JetStream adapter: the event log, work queues and telemetry as streams."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from schemas import Envelope, Message
from shared.bus import subjects
from shared.bus.dedupe import unique
from shared.bus.dispatch import answer, read_reply
from shared.bus.errors import BusError, BusUnavailable, ConcurrencyError, RequestFailed
from shared.bus.flows import windows
from shared.bus.nats_batch import publish_batch
from shared.bus.nats_client import HeadersClient
from shared.bus.nats_readers import (
    TRANSIENT,
    Puller,
    Reader,
    Server,
    Trouble,
    Watcher,
    logged,
    start_at,
)
from shared.bus.nats_streams import ensure_streams, stream_configs
from shared.bus.nats_unclaimed import take_unclaimed
from shared.bus.protocol import (
    BATCH_LIMIT,
    UNCLAIMED,
    AppendResult,
    ConsumerSpec,
    DeadLetter,
    Handler,
    Logged,
    QueryHandler,
    Stream,
    Subscription,
    WatchHandler,
)
from shared.tasks import cancel_and_wait

log = structlog.get_logger("vplane.bus.nats")

WRONG_LAST_SEQUENCE = 10071
_ACTUAL_SEQ = re.compile(r"(\d+)\s*$")
H_REASON = "Vplane-Reason"
H_COUNT = "Vplane-Delivery-Count"
H_SUBJECT = "Vplane-Subject"
H_CONSUMER = "Vplane-Consumer"
# How long a publish waits for the broker's acknowledgement.
PUBLISH_TIMEOUT = 10.0
DRAIN_SECONDS = 5


class _NotWhole(Exception):
    """A batch of commands could not go as one."""


class NatsBus:
    def __init__(
        self,
        url: str,
        namespace: str = "vplane",
        *,
        client_name: str = "vplane",
        connect_timeout: float = 5.0,
        replicas: int = 1,
    ) -> None:
        self.url = url
        # Copies of each stream: 3 on a JetStream cluster, so that it outlives a node.
        self._replicas = replicas
        self._connect_timeout = connect_timeout
        self._last_error = ""
        self.namespace = namespace
        self._client_name = client_name
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: list[Subscription] = []
        self._names = {s: f"{namespace.upper()}_{s.name}" for s in Stream}
        self._dlq_stream = f"{namespace.upper()}_DEADLETTERS"
        self._data_stream = f"{namespace.upper()}_DATA"
        # Counts the connections lost: a reader that sees it change restores its consumer.
        self._generation = 0
        # Set while connected with every stream in place (they are made again after a
        # reconnect: a restarted broker has lost its memory streams).
        self._ready = asyncio.Event()
        self._restoring: asyncio.Task[None] | None = None
        self._created: dict[str, datetime.datetime | None] = {}
        # Publishes awaiting their acknowledgement (telemetry one by one, bulk appends and
        # data by the batch), failed as one when the connection drops.
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._batches: dict[int, list[asyncio.Future[Any]]] = {}
        self._telemetry = Trouble("telemetry publish")
        self._reconnecting = Trouble("reconnect")
        self._closing = False

    @property
    def available(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def generation(self) -> int:
        return self._generation

    async def restored(self) -> int:
        """Wait until connected with every stream in place; the generation then current."""
        await self._ready.wait()
        return self._generation

    def stream_created(self, stream: str) -> datetime.datetime | None:
        return self._created.get(stream)

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusError("the bus is not started")
        return self._js

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise BusError("the bus is not started")
        return self._nc

    async def start(self) -> None:
        self._closing = False
        nc = HeadersClient()
        try:
            # The client retries forever (a restarted broker is waited for), so the
            # first connection gets a deadline of its own.
            await asyncio.wait_for(
                nc.connect(
                    self.url,
                    name=self._client_name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    # A subscription that does not drain (its handler stuck) holds the
                    # process's exit no longer than this, not nats-py's 30 s.
                    drain_timeout=DRAIN_SECONDS,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                ),
                timeout=self._connect_timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as err:
            with contextlib.suppress(Exception):
                await nc.close()
            raise BusUnavailable(
                f"cannot reach NATS at {self.url} within {self._connect_timeout:g}s"
                + (f" ({self._last_error})" if self._last_error else "")
            ) from err
        self._nc = nc
        self._js = self._nc.jetstream(timeout=PUBLISH_TIMEOUT)
        await self._ensure_streams()
        self._ready.set()

    async def _ensure_streams(self) -> None:
        configs = stream_configs(
            self.namespace, self._names, self._dlq_stream, self._data_stream, self._replicas
        )
        self._created = await ensure_streams(self.nc.jsm(), configs)

    async def _on_error(self, err: Exception) -> None:
        self._last_error = str(err) or type(err).__name__
        # Before the first connection the caller is told; after it, errors are logged,
        # and while reconnecting only the first of a run of failed attempts.
        if self._nc is None:
            return
        if self._nc.is_connected:
            log.warning("nats error", error=self._last_error)
        else:
            self._reconnecting.failed(self._last_error)

    async def _on_disconnect(self) -> None:
        self._generation += 1
        self._ready.clear()
        self._fail_in_flight()
        # Before the first connection (a failed start) the caller is told, not the log.
        if self._nc is not None and not self._closing:
            log.warning("disconnected from nats, reconnecting")

    def _fail_in_flight(self) -> None:
        # Their acknowledgements were to come on the connection that dropped: they never will.
        for future in [*self._in_flight, *itertools.chain(*self._batches.values())]:
            if not future.done():
                future.set_exception(BusUnavailable("the connection dropped before the ack"))

    async def _on_reconnect(self) -> None:
        self._reconnecting.ok()
        log.info("reconnected to nats")
        # The client waits for this callback: the streams are restored beside it.
        if self._restoring is None or self._restoring.done():
            self._restoring = asyncio.create_task(self._restore(), name="nats-restore")

    async def _restore(self) -> None:
        trouble = Trouble("restoring streams")
        while not self._closing:
            generation = self._generation
            if self.available:
                try:
                    await self._ensure_streams()
                except TRANSIENT as err:
                    trouble.failed(err)
                else:
                    if generation == self._generation:
                        trouble.ok()
                        self._ready.set()
                        return
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        for sub in reversed(self._subs):
            await sub.stop()
        self._subs.clear()
        if self._in_flight:
            # Telemetry sent just before: let its acknowledgements come in.
            await asyncio.wait(list(self._in_flight), timeout=2)
        self._closing = True
        if self._restoring is not None:
            await cancel_and_wait(self._restoring)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except nats.errors.Error:
                # Reconnecting or already gone: nothing left to drain, just let go.
                try:
                    await self._nc.close()
                except OSError:
                    _abandon(self._nc)
        self._fail_in_flight()
        self._nc = self._js = None
        self._ready.clear()

    async def append(
        self, env: Envelope[Any], *, expected_version: int | None = None
    ) -> AppendResult:
        headers: dict[str, str] = {api.Header.MSG_ID: str(env.id)}
        if expected_version is not None:
            headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(expected_version)
        try:
            ack = await self.js.publish(
                subjects.event_subject(self.namespace, env), env.encode(), headers=headers
            )
        except nats.js.errors.APIError as err:
            if err.err_code == WRONG_LAST_SEQUENCE:
                found = _ACTUAL_SEQ.search(err.description or "")
                actual = int(found.group(1)) if found else None
                raise ConcurrencyError(env.subject, expected_version or 0, actual) from err
            raise bus_error(err, "append failed") from err
        except TRANSIENT as err:
            raise bus_error(err, "append failed") from err
        return AppendResult(ack.seq, bool(ack.duplicate))

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        acks = await self._confirmed(
            (
                (
                    subjects.event_subject(self.namespace, env),
                    env.encode(),
                    {api.Header.MSG_ID: str(env.id)},
                )
                for env in envs
            ),
            timeout=30,
            what="append failed",
        )
        return [AppendResult(a.seq, bool(a.duplicate)) for a in acks]

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        if len(envs) == 1:
            # One event is atomic as it is, and a plain publish costs a fraction of a batch.
            return [await self.append(envs[0], expected_version=(expected or {}).get(0))]
        return await publish_batch(self.nc, self.namespace, envs, expected or {}, timeout=10)

    async def version(self, aggregate: str) -> int:
        try:
            msg = await self.nc.jsm().get_last_msg(
                self._names[Stream.EVENTS], subjects.aggregate_subject(self.namespace, aggregate)
            )
        except nats.js.errors.NotFoundError:
            return 0
        except TRANSIENT as err:
            raise bus_error(err, f"version of {aggregate}") from err
        return int(msg.seq or 0)

    async def last_seq(self) -> int:
        try:
            info = await self.nc.jsm().stream_info(self._names[Stream.EVENTS])
        except TRANSIENT as err:
            raise bus_error(err, "end of the log") from err
        return int(info.state.last_seq)

    async def replay(
        self, *, from_seq: int = 1, filters: tuple[str, ...] = ()
    ) -> AsyncIterator[Logged]:
        end = await self.last_seq()
        if end < from_seq:
            return
        reader = await self._reader(
            self._names[Stream.EVENTS], self._wanted(Stream.EVENTS, filters), from_seq
        )
        async for entry in unique(logged(msg) async for msg in reader.messages(until=end)):
            yield entry

    async def _reader(
        self, stream_name: str, wanted: tuple[str, ...], from_seq: int | None
    ) -> Reader:
        """An ephemeral, unacknowledged consumer: created before it is read, so a
        watcher started "from now" misses nothing published after this returns."""
        reader = Reader(self, stream_name, wanted)
        try:
            await reader.open(from_seq)
        except TRANSIENT as err:
            raise bus_error(err, f"reading {stream_name}") from err
        return reader

    def _wanted(self, stream: Stream, filters: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(subjects.stream_subject(self.namespace, stream, f) for f in filters or (">",))

    async def send(self, env: Envelope[Any]) -> None:
        await self._publish(
            subjects.command_subject(self.namespace, env),
            env.encode(),
            {api.Header.MSG_ID: str(env.id)},
        )

    async def send_many(self, envs: list[Envelope[Any]]) -> None:
        if len(envs) > 1:
            with contextlib.suppress(_NotWhole):
                await self._send_whole(envs)
                return
        await self._confirmed(
            (
                (
                    subjects.command_subject(self.namespace, env),
                    env.encode(),
                    {api.Header.MSG_ID: str(env.id)},
                )
                for env in envs
            ),
            timeout=30,
            what="send failed",
        )

    async def _send_whole(self, envs: list[Envelope[Any]]) -> None:
        """Commands in atomic batches: one write to the log's disk for each batch, not
        one for each command (under load, a round's CreateVm commands sent one by one
        queued behind each other's fsync). A batch holding a command already sent (sent
        again after a restart) is refused whole, and so is one the stream does not allow:
        then they go one by one, and the stream's deduplication drops the ones it has."""
        for at in range(0, len(envs), BATCH_LIMIT):
            part = envs[at : at + BATCH_LIMIT]
            try:
                results = await publish_batch(
                    self.nc, self.namespace, part, {}, 30, subjects.command_subject
                )
            except BusUnavailable:
                raise
            except BusError as err:
                raise _NotWhole(str(err)) from err
            if any(r.duplicate for r in results):
                raise _NotWhole("sent before")

    async def emit(self, env: Envelope[Any]) -> None:
        # Telemetry is a time series: a lost sample is replaced by the next tick, so it
        # is published without waiting for each acknowledgement, and not at all while
        # the broker is away; the samples lost are counted and logged once per outage.
        if not self.available:
            self._telemetry.failed("not connected")
            return
        try:
            future = await self.js.publish_async(
                subjects.telemetry_subject(self.namespace, env), env.encode()
            )
        except TRANSIENT as err:
            self._telemetry.failed(err)
            return
        self._in_flight.add(future)
        future.add_done_callback(self._emitted)

    def _emitted(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.discard(future)
        error = "cancelled" if future.cancelled() else future.exception()
        if error is None:
            self._telemetry.ok()
        else:
            self._telemetry.failed(error)

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        await self._publish(subjects.stream_subject(self.namespace, stream, subject), data, None)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self.js.publish(subject, data, headers=headers)
        except TRANSIENT as err:
            raise bus_error(err, f"publish to {subject} failed") from err

    async def _confirmed(
        self,
        messages: Iterable[tuple[str, bytes, dict[str, str] | None]],
        *,
        timeout: float,
        what: str,
    ) -> list[Any]:
        """Publish with every acknowledgement in flight together: all of them confirmed,
        or one error raised, and none left pending or failed unretrieved either way."""
        futures: list[asyncio.Future[Any]] = []
        self._batches[id(futures)] = futures
        try:
            for subject, data, headers in messages:
                futures.append(await self.js.publish_async(subject, data, headers=headers))
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TRANSIENT as err:
            raise bus_error(err, what) from err
        finally:
            del self._batches[id(futures)]
            _settle(futures)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise bus_error(failed, what) from failed
        return results

    async def ensure_consumer(self, stream: str, config: api.ConsumerConfig) -> None:
        """Create a durable consumer, or keep the one there: an existing durable keeps its
        position, so a restarted service resumes it as it was, even if it now asks for
        another start."""
        try:
            await self.nc.jsm().add_consumer(stream, config)
        except nats.js.errors.BadRequestError as err:
            log.info("resuming existing consumer", consumer=config.durable_name, note=str(err))

    async def consume(self, spec: ConsumerSpec, handler: Handler) -> Puller:
        stream = self._names[spec.stream]
        wanted = [subjects.stream_subject(self.namespace, spec.stream, f) for f in spec.filters]
        config = api.ConsumerConfig(
            durable_name=spec.name,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=spec.ack_wait,
            # Redelivery is bounded by the dispatcher, which dead-letters on the last
            # attempt; the server never gives up silently on its own.
            max_deliver=-1,
            max_ack_pending=max(spec.batch * 4, 1000),
            filter_subjects=wanted,
            **start_at(spec.start_seq),
        )
        try:
            await self.ensure_consumer(stream, config)
            sub = await self.js.pull_subscribe_bind(durable=spec.name, stream=stream)
        except TRANSIENT as err:
            raise bus_error(err, f"consumer {spec.name}") from err
        puller = Puller(self, spec, handler, stream, config, sub)
        self._subs.append(puller)
        return puller

    async def bury(self, consumer: str, msg: Msg, reason: str, attempt: int) -> None:
        seq = msg.metadata.sequence.stream
        await self._bury(consumer, msg.subject, seq, msg.data, reason, attempt)

    async def _bury(
        self, consumer: str, subject: str, seq: int, data: bytes, reason: str, attempt: int
    ) -> None:
        headers = {
            H_REASON: reason[:1000],
            H_COUNT: str(attempt),
            H_SUBJECT: subject,
            H_CONSUMER: consumer,
            # A burial repeated after a crash is recognised as the same dead letter.
            api.Header.MSG_ID: f"{consumer}:{seq}",
        }
        await self._publish(subjects.dead_letter_subject(self.namespace, consumer), data, headers)

    async def unclaimed(
        self, pattern: str, known: Callable[[str], bool], handler: Handler, *, older_than: float
    ) -> int:
        async def bury(subject: str, seq: int, data: bytes, reason: str) -> None:
            await self._bury(UNCLAIMED, subject, seq, data, reason, 1)

        full = subjects.stream_subject(self.namespace, Stream.COMMANDS, pattern)
        stream = self._names[Stream.COMMANDS]
        try:
            return await take_unclaimed(self.js, stream, full, known, handler, bury, older_than)
        except TRANSIENT as err:
            raise bus_error(err, "unclaimed commands") from err

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> Watcher:
        reader = await self._reader(self._names[stream], self._wanted(stream, filters), from_seq)
        watcher = Watcher(reader.messages(until=None), handler)
        self._subs.append(watcher)
        return watcher

    async def request(self, env: Envelope[Any], *, timeout: float = 5.0) -> Envelope[Message]:
        try:
            msg = await self.nc.request(
                subjects.query_subject(self.namespace, env.subject), env.encode(), timeout=timeout
            )
        except nats.errors.NoRespondersError:
            raise RequestFailed(f"nobody answers queries to {env.subject}") from None
        except nats.errors.TimeoutError:
            raise RequestFailed(f"no answer to {env.type} within {timeout}s") from None
        except TRANSIENT as err:
            raise bus_error(err, f"query {env.type}") from err
        return read_reply(msg.data)

    async def serve(self, target: str, handler: QueryHandler) -> Server:
        async def on_request(msg: Msg) -> None:
            await msg.respond(await answer(handler, msg.data, producer=target))

        subject = subjects.query_subject(self.namespace, target)
        sub = await self.nc.subscribe(subject, queue=f"q-{target.replace('/', '-')}", cb=on_request)
        server = Server(sub)
        self._subs.append(server)
        return server

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        subject = subjects.dead_letter_subject(self.namespace, consumer)
        info = await self.nc.jsm().stream_info(self._dlq_stream)
        if info.state.messages == 0:
            return []
        out = []
        reader = await self._reader(self._dlq_stream, (subject,), 1)
        async for msg in reader.messages(until=int(info.state.last_seq)):
            h = msg.headers or {}
            out.append(
                DeadLetter(
                    consumer=h.get(H_CONSUMER, consumer),
                    subject=h.get(H_SUBJECT, ""),
                    reason=h.get(H_REASON, ""),
                    delivery_count=int(h.get(H_COUNT, "0")),
                    data=msg.data,
                )
            )
        return out

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        subject = subjects.data_subject(self.namespace, flow)
        for window in windows(chunks):
            await self._confirmed(
                ((subject, chunk, None) for chunk in window),
                timeout=60,
                what=f"data flow {flow}: publish failed",
            )

    async def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]:
        """The flow's chunks, fetched a few at a time from an ephemeral consumer: chunks
        are large, and fetched one by one (as the log's followers fetch) they came at a
        tenth of the rate. A delivery lost to a dropped connection fails the read, which
        its command then takes again."""
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, mem_storage=True, inactive_threshold=60
        )
        try:
            sub = await self.js.pull_subscribe(
                subjects.data_subject(self.namespace, flow),
                stream=self._data_stream,
                config=config,
            )
        except TRANSIENT as err:
            raise bus_error(err, f"reading data flow {flow}") from err
        try:
            got = 0
            while got < count:
                msgs = await _fetched(sub, min(DATA_FETCH, count - got), flow, got, count, timeout)
                for msg in msgs:
                    got += 1
                    if msg.metadata.sequence.consumer != got:
                        raise BusUnavailable(f"data flow {flow}: chunk {got} went missing")
                    yield msg.data
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            # Unsubscribing leaves the ephemeral consumer on the server until it has been
            # idle for its threshold; a stream holds at most 1,000, which an FT pair's
            # checkpoint epochs (two flows each) outrun within seconds.
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self._data_stream, sub._consumer)


# Chunks of a data flow fetched together (512 KiB each, as a migration sends them).
DATA_FETCH = 16


async def _fetched(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    flow: str,
    got: int,
    count: int,
    timeout: float,
) -> list[Msg]:
    try:
        msgs: list[Msg] = await sub.fetch(batch, timeout=timeout)
    except TimeoutError:
        raise BusError(f"data flow {flow}: chunk {got + 1} of {count} did not come") from None
    except (nats.errors.Error, OSError) as err:
        raise BusUnavailable(f"data flow {flow}: reading failed: {err!r}") from err
    return msgs


def bus_error(err: BaseException, what: str) -> BusError:
    """A driver's error as the bus's: a refusal is a BusError, anything that says the
    broker is not there (a timeout, a lost connection, no stream yet) BusUnavailable."""
    if isinstance(err, BusError):
        return err
    refused = isinstance(err, nats.js.errors.APIError) and not isinstance(
        err, nats.js.errors.ServiceUnavailableError
    )
    return (BusError if refused else BusUnavailable)(f"{what}: {err!r}")


def _abandon(nc: Client) -> None:
    """Finish what nats-py's close leaves undone when it cannot write what it buffered
    while disconnected to the dead socket: its subscriptions' tasks would be destroyed
    pending. (Private parts of the client, looked up defensively.)"""
    for sub in list(getattr(nc, "_subs", {}).values()):
        task = getattr(sub, "_wait_for_msgs_task", None)
        if task is not None and not task.done():
            task.cancel()


def _settle(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()
