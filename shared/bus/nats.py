"""The NATS JetStream adapter: the event log, work queues and telemetry as streams."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
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
from shared.bus.flows import first_chunks
from shared.bus.nats_batch import publish_batch
from shared.bus.nats_readers import Puller, Server, Watcher, logged, messages, start_at
from shared.bus.nats_streams import stream_configs
from shared.bus.protocol import (
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

log = structlog.get_logger("vplane.bus.nats")

WRONG_LAST_SEQUENCE = 10071
_ACTUAL_SEQ = re.compile(r"(\d+)\s*$")
H_REASON = "Vplane-Reason"
H_COUNT = "Vplane-Delivery-Count"
H_SUBJECT = "Vplane-Subject"
H_CONSUMER = "Vplane-Consumer"


class NatsBus:
    atomic_versions = True

    def __init__(
        self,
        url: str,
        namespace: str = "vplane",
        *,
        client_name: str = "vplane",
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
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

    async def _on_error(self, err: Exception) -> None:
        self._last_error = str(err) or type(err).__name__
        # Before the first connection the caller is told; after it, reconnects are logged.
        if self._nc is not None:
            log.warning("nats error", error=self._last_error)

    @property
    def available(self) -> bool:
        return self._nc is not None and self._nc.is_connected

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
        nc = Client()
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
                    error_cb=self._on_error,
                    disconnected_cb=_on_disconnect,
                    reconnected_cb=_on_reconnect,
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
        self._js = self._nc.jetstream(timeout=10)
        jsm = self._nc.jsm()
        for config in stream_configs(
            self.namespace, self._names, self._dlq_stream, self._data_stream
        ):
            try:
                await jsm.add_stream(config)
            except nats.js.errors.BadRequestError:
                await jsm.update_stream(config)

    async def close(self) -> None:
        for sub in reversed(self._subs):
            await sub.stop()
        self._subs.clear()
        if self._nc is not None and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except nats.errors.Error:
                # Reconnecting or already gone: nothing left to drain, just let go.
                await self._nc.close()
        self._nc = self._js = None

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
            raise BusError(f"append failed: {err}") from err
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as err:
            raise BusUnavailable(f"append failed: {err}") from err
        return AppendResult(ack.seq, bool(ack.duplicate))

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        futures = [
            await self.js.publish_async(
                subjects.event_subject(self.namespace, env),
                env.encode(),
                headers={api.Header.MSG_ID: str(env.id)},
            )
            for env in envs
        ]
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
        except (TimeoutError, nats.js.errors.APIError) as err:
            raise BusError(f"append failed: {err}") from err
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
        return int(msg.seq or 0)

    async def last_seq(self) -> int:
        info = await self.nc.jsm().stream_info(self._names[Stream.EVENTS])
        return int(info.state.last_seq)

    async def replay(
        self, *, from_seq: int = 1, filters: tuple[str, ...] = ()
    ) -> AsyncIterator[Logged]:
        end = await self.last_seq()
        if end < from_seq:
            return
        sub = await self._reader(
            self._names[Stream.EVENTS], self._wanted(Stream.EVENTS, filters), from_seq
        )
        async for entry in unique(logged(msg) async for msg in messages(sub, until=end)):
            yield entry

    async def _reader(
        self, stream_name: str, wanted: tuple[str, ...], from_seq: int | None
    ) -> JetStreamContext.PullSubscription:
        """An ephemeral, unacknowledged consumer: created before it is read, so a
        watcher started "from now" misses nothing published after this returns."""
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            filter_subjects=list(wanted),
            inactive_threshold=60,
            mem_storage=True,
            max_waiting=1,
            **start_at(from_seq),
        )
        return await self.js.pull_subscribe(wanted[0], stream=stream_name, config=config)

    def _wanted(self, stream: Stream, filters: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(subjects.stream_subject(self.namespace, stream, f) for f in filters or (">",))

    async def send(self, env: Envelope[Any]) -> None:
        await self._publish(
            subjects.command_subject(self.namespace, env),
            env.encode(),
            {api.Header.MSG_ID: str(env.id)},
        )

    async def emit(self, env: Envelope[Any]) -> None:
        # Telemetry is a time series: a lost sample is replaced by the next tick,
        # so it is published without waiting for each acknowledgement.
        await self.js.publish_async(subjects.telemetry_subject(self.namespace, env), env.encode())

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        await self._publish(subjects.stream_subject(self.namespace, stream, subject), data, None)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self.js.publish(subject, data, headers=headers)
        except nats.js.errors.APIError as err:
            raise BusError(f"publish to {subject} failed: {err}") from err
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError) as err:
            raise BusUnavailable(f"publish to {subject} failed: {err}") from err

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
            await self.nc.jsm().add_consumer(stream, config)
        except nats.js.errors.BadRequestError as err:
            # A durable that exists already keeps its position: a restarted service
            # resumes it as it was, even if it now asks for another start.
            log.info("resuming existing consumer", consumer=spec.name, note=str(err))
        sub = await self.js.pull_subscribe_bind(durable=spec.name, stream=stream)
        puller = Puller(self, spec, handler, sub)
        self._subs.append(puller)
        return puller

    async def bury(self, consumer: str, msg: Msg, reason: str, attempt: int) -> None:
        headers = {
            H_REASON: reason[:1000],
            H_COUNT: str(attempt),
            H_SUBJECT: msg.subject,
            H_CONSUMER: consumer,
            # A burial repeated after a crash is recognised as the same dead letter.
            api.Header.MSG_ID: f"{consumer}:{msg.metadata.sequence.stream}",
        }
        await self._publish(
            subjects.dead_letter_subject(self.namespace, consumer), msg.data, headers
        )

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> Watcher:
        sub = await self._reader(self._names[stream], self._wanted(stream, filters), from_seq)
        watcher = Watcher(messages(sub, until=None), handler)
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
        sub = await self._reader(self._dlq_stream, (subject,), 1)
        async for msg in messages(sub, until=int(info.state.last_seq)):
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
        futures = [await self.js.publish_async(subject, chunk) for chunk in chunks]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*futures)
        except (TimeoutError, nats.js.errors.APIError) as err:
            raise BusError(f"data flow {flow}: publish failed: {err!r}") from err

    async def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]:
        sub = await self._reader(
            self._data_stream, (subjects.data_subject(self.namespace, flow),), 1
        )
        chunks = messages(sub, until=None)
        try:
            async for msg in first_chunks(chunks, flow, count, timeout):
                yield msg.data
        finally:
            await chunks.aclose()


async def _on_disconnect() -> None:
    log.debug("disconnected from nats")


async def _on_reconnect() -> None:
    log.info("reconnected to nats")
