"""What a consumer does with one delivered message, the same on every broker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from schemas import Envelope, Message, Reply
from schemas.envelope import EnvelopeTooLarge
from schemas.queries import QueryFailed
from shared.bus.dedupe import RecentIds
from shared.bus.errors import BusUnavailable, PoisonMessage, RequestFailed
from shared.bus.protocol import Delivery, Handler, Logged, QueryHandler
from shared.codec import MessageError, decode

log = structlog.get_logger("vplane.bus")

T = TypeVar("T")

# How long a handler cut off from the broker is tried again in place, its message held
# (within a consumer's usual ack wait): an outage is no fault of the message, and handing
# it back would count a delivery toward burying it.
UNAVAILABLE_PATIENCE = 20.0


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float


@dataclass(frozen=True, slots=True)
class Bury:
    """Give up: send the original bytes to the dead-letter subject with this reason."""

    reason: str


Outcome = Ack | Retry | Bury


async def dispatch(  # noqa: PLR0911 - one return per verdict
    raw: bytes,
    delivery: Delivery,
    handler: Handler,
    *,
    max_deliver: int,
    retry_delay: float,
    seen: RecentIds,
) -> Outcome:
    try:
        env = decode(raw)
    except MessageError as err:
        return Bury(err.describe())
    if env.id in seen:
        # The same message twice in the log (a retried publish): handled already.
        return Ack()
    # Set and reset by token: a third of what bound_contextvars costs, per message.
    bound = structlog.contextvars.bind_contextvars(
        msg_type=env.type,
        subject=env.subject,
        correlation_id=str(env.correlation_id),
        seq=delivery.seq,
    )
    try:
        try:
            await _through_outages(handler, env, delivery)
        except asyncio.CancelledError:
            raise
        except BusUnavailable as err:
            log.warning("broker still away; message handed back", error=str(err))
            return Retry(retry_delay)
        except PoisonMessage as err:
            log.warning("message rejected by handler", reason=str(err))
            return Bury(f"poison: {err}")
        except Exception as err:
            if delivery.attempt >= max_deliver:
                log.error("handler failed, giving up", attempt=delivery.attempt, exc_info=True)
                return Bury(f"handler-failed: {type(err).__name__}: {err}")
            log.warning("handler failed, will retry", attempt=delivery.attempt, error=str(err))
            return Retry(retry_delay * delivery.attempt)
    finally:
        structlog.contextvars.reset_contextvars(**bound)
    seen.add(env.id)
    return Ack()


async def together(steps: Sequence[Awaitable[T]]) -> list[T | BaseException]:
    """Run ``steps`` at once, started in order, each one's result or error in its place;
    a single step runs in place, without a task of its own."""
    if len(steps) == 1:
        try:
            return [await steps[0]]
        except Exception as err:
            return [err]
    return list(await asyncio.gather(*steps, return_exceptions=True))


async def _through_outages(handler: Handler, env: Envelope[Message], delivery: Delivery) -> None:
    """Run the handler, again while it fails only because the broker is away."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNAVAILABLE_PATIENCE
    pause = 0.1
    while True:
        try:
            await handler(env, delivery)
        except BusUnavailable as err:
            if loop.time() + pause > deadline:
                raise
            log.info("broker away; trying the message again", error=str(err), retry_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        else:
            return


async def answer(handler: QueryHandler, raw: bytes, *, producer: str) -> bytes:
    """Run a query handler on request bytes; a failure becomes a QueryFailed reply."""
    reply: Reply
    request: Envelope[Any] | None = None
    try:
        request = decode(raw)
        reply = await handler(request)
    except MessageError as err:
        reply = QueryFailed(reason=err.describe())
    except PoisonMessage as err:
        # The handler's own verdict on the question: its words are the answer.
        reply = QueryFailed(reason=str(err))
    except Exception as err:
        log.exception("query handler failed")
        reply = QueryFailed(reason=f"{type(err).__name__}: {err}")
    subject = request.subject if request is not None else "query"
    try:
        return Envelope.wrap(reply, producer=producer, subject=subject, caused_by=request).encode()
    except EnvelopeTooLarge as err:
        failed = QueryFailed(reason=f"the answer is too large: {err}")
        return Envelope.wrap(failed, producer=producer, subject=subject, caused_by=request).encode()


def entry_of(seq: int, subject: str, raw: bytes) -> Logged:
    """A log entry as read back, decoded when first looked at (or with the reason it
    does not decode)."""
    return Logged(seq, subject, raw, decoder=_decoded)


def _decoded(raw: bytes) -> tuple[Envelope[Message] | None, str | None]:
    try:
        return decode(raw), None
    except MessageError as err:
        return None, err.describe()


def read_reply(raw: bytes) -> Envelope[Message]:
    try:
        env = decode(raw)
    except MessageError as err:
        raise RequestFailed(f"unreadable reply: {err.describe()}") from None
    if isinstance(env.data, QueryFailed):
        raise RequestFailed(env.data.reason)
    return env
