"""What every bus adapter promises; the contract tests hold each adapter to it."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from schemas import Envelope, Message, Reply

# The dead-letter consumer of commands for targets nobody serves that do not decode.
UNCLAIMED = "unclaimed"
# The most events one atomic append may hold (JetStream's limit for an atomic batch).
BATCH_LIMIT = 1000


class Stream(enum.StrEnum):
    EVENTS = "evt"
    COMMANDS = "cmd"
    TELEMETRY = "tel"


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where a consumed message sits and how often it has been delivered."""

    seq: int
    attempt: int
    subject: str


# How an entry read back is decoded: its envelope, or None and why not.
Decoder = Callable[[bytes], "tuple[Envelope[Message] | None, str | None]"]


class Logged:
    """One entry of a stream as read back; ``envelope`` is None when it does not decode
    (``error`` says why). An entry read from a broker is decoded when first looked at: a
    follower passes over the ones it has folded already (its own appends) undecoded."""

    __slots__ = ("_decoder", "_envelope", "_error", "raw", "seq", "subject")

    def __init__(
        self,
        seq: int,
        subject: str,
        raw: bytes,
        envelope: Envelope[Message] | None = None,
        error: str | None = None,
        *,
        decoder: Decoder | None = None,
    ) -> None:
        self.seq = seq
        self.subject = subject
        self.raw = raw
        self._envelope = envelope
        self._error = error
        self._decoder = decoder

    def _decode(self) -> None:
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            self._envelope, self._error = decoder(self.raw)

    @property
    def envelope(self) -> Envelope[Message] | None:
        self._decode()
        return self._envelope

    @property
    def error(self) -> str | None:
        self._decode()
        return self._error


@dataclass(frozen=True, slots=True)
class DeadLetter:
    consumer: str
    subject: str
    reason: str
    delivery_count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A durable consumer: ``filters`` are subjects below the namespace, like ``evt.vm.>``."""

    name: str
    stream: Stream
    filters: tuple[str, ...]
    max_deliver: int = 5
    ack_wait: float = 30.0
    batch: int = 256
    retry_delay: float = 0.2
    # Where a new consumer starts in the event log; an existing one resumes where it was.
    start_seq: int = 1
    # How many delivered messages the handler is given at once, each settled on its own
    # verdict; 1 hands them over strictly one after another. Handlers are started in
    # delivery order and run until their first wait in that order.
    in_flight: int = 1


Handler = Callable[[Envelope[Message], Delivery], Awaitable[None]]
WatchHandler = Callable[[Logged], Awaitable[None]]
QueryHandler = Callable[[Envelope[Message]], Awaitable[Reply]]


class DataFlows(Protocol):
    """Bulk bytes beside the log (guest pages), the part of a bus a mechanism needs."""

    async def put_data(self, flow: str, chunks: list[bytes]) -> None: ...

    def read_data(
        self, flow: str, count: int, *, timeout: float = 30.0
    ) -> AsyncIterator[bytes]: ...


class Subscription(Protocol):
    async def stop(self) -> None:
        """Stop taking messages, let in-flight handlers finish and acknowledge them."""


class Bus(Protocol):
    namespace: str

    @property
    def available(self) -> bool:
        """False while the adapter knows its broker is away (disconnected, reconnecting);
        a service reports itself not ready meanwhile."""

    async def start(self) -> None:
        """Connect and create the streams (idempotent)."""

    async def close(self) -> None: ...

    async def append(
        self, env: Envelope[Any], *, expected_version: int | None = None
    ) -> AppendResult:
        """Append an event. ``expected_version`` is the log sequence of the aggregate's
        last event (0 for a new aggregate); when it is stale, raise ConcurrencyError.
        An envelope id already in the log is not appended again."""

    async def append_many(self, envs: list[Envelope[Any]]) -> list[AppendResult]:
        """Append several events with their acknowledgements in flight together; each
        lands on its own (a bulk path for tools and benchmarks, not for answers)."""

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        """Append events as one unit, in order: all of them land or none does, and a
        reader never sees part of it. ``expected`` maps a position in ``envs`` to the
        expected version of that event's aggregate; when one is stale, raise
        ConcurrencyError and append nothing. A batch any of whose ids is in the log
        already was appended before: nothing is appended and every result is a
        duplicate (its ``seq`` is 0 where the adapter cannot tell it). At most
        BATCH_LIMIT events."""

    async def version(self, aggregate: str) -> int:
        """The log sequence of the aggregate's last event, 0 if it has none."""

    async def last_seq(self) -> int:
        """The sequence of the newest event in the log, 0 when empty."""

    def replay(self, *, from_seq: int = 1, filters: tuple[str, ...] = ()) -> AsyncIterator[Logged]:
        """The event log in order from ``from_seq`` up to its end at the time of the call."""

    async def send(self, env: Envelope[Any]) -> None:
        """Queue a command; it waits for its handler even if none is running."""

    async def send_many(self, envs: list[Envelope[Any]]) -> None:
        """Queue commands in this order with their acknowledgements in flight together;
        all of them are queued, or an error is raised (and sending them again is safe:
        a command's id is recognised)."""

    async def emit(self, env: Envelope[Any]) -> None:
        """Publish a telemetry sample (bounded retention)."""

    async def publish_raw(self, stream: Stream, subject: str, data: bytes) -> None:
        """Put arbitrary bytes on a stream subject (below the namespace); for tools and tests."""

    async def consume(self, spec: ConsumerSpec, handler: Handler) -> Subscription:
        """Run a durable consumer: explicit ack, bounded redelivery, dead letters."""

    async def unclaimed(
        self, pattern: str, known: Callable[[str], bool], handler: Handler, *, older_than: float
    ) -> int:
        """Hand ``handler`` each command that waits under ``pattern`` (below the command
        stream, one ``*`` standing for its target: ``host.*.>``) for a target ``known``
        does not know, which no consumer will ever take, once it has waited ``older_than``
        seconds; it leaves the queue once handled (dead-lettered as ``unclaimed`` if it
        does not decode). How many were handled. Where the broker refuses such a command
        when it is sent (RabbitMQ: ``Unroutable``), none ever waits."""

    async def watch(
        self,
        stream: Stream,
        filters: tuple[str, ...],
        handler: WatchHandler,
        *,
        from_seq: int | None = None,
    ) -> Subscription:
        """Follow a stream without a durable cursor, from ``from_seq`` or from now."""

    async def request(self, env: Envelope[Any], *, timeout: float = 5.0) -> Envelope[Message]:
        """Ask a query and wait for its reply."""

    async def serve(self, target: str, handler: QueryHandler) -> Subscription:
        """Answer the queries addressed to ``target`` (an envelope subject such as ``hosts``)."""

    async def dead_letters(self, consumer: str) -> list[DeadLetter]:
        """What the named consumer gave up on, oldest first."""

    async def put_data(self, flow: str, chunks: list[bytes]) -> None:
        """Publish bulk bytes (guest pages) on a flow's data subject, in order, confirmed."""

    def read_data(self, flow: str, count: int, *, timeout: float = 30.0) -> AsyncIterator[bytes]:
        """The first ``count`` chunks of a flow, in order; waits up to ``timeout`` for each."""
