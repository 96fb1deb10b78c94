"""Commands that wait on NATS for a target nobody serves (no consumer's filter takes its
subject): found by subject, handed to a handler, and deleted from the work queue. They
are read by subject rather than through a consumer, whose filter could clash with the
work queue's other consumers."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Awaitable, Callable

import nats.js.errors
from nats.js import JetStreamContext

from shared.bus.dedupe import RecentIds
from shared.bus.dispatch import Bury, Retry, dispatch
from shared.bus.protocol import Delivery, Handler

# Puts a message in the dead letters: its subject, sequence, bytes and the reason.
BuryFn = Callable[[str, int, bytes, str], Awaitable[None]]


async def take_unclaimed(
    js: JetStreamContext,
    stream: str,
    pattern: str,
    known: Callable[[str], bool],
    handler: Handler,
    bury: BuryFn,
    older_than: float,
) -> int:
    """``pattern`` is a full subject with one ``*`` standing for the target; how many
    commands were handled."""
    target = pattern.split(".").index("*")
    info = await js.stream_info(stream, subjects_filter=pattern)
    waiting = sorted(s for s in (info.state.subjects or {}) if not known(s.split(".")[target]))
    handled = 0
    for subject in waiting:
        handled += await _take_on(js, stream, subject, handler, bury, older_than)
    return handled


async def _take_on(
    js: JetStreamContext,
    stream: str,
    subject: str,
    handler: Handler,
    bury: BuryFn,
    older_than: float,
) -> int:
    """The commands waiting on one subject, oldest first, read and deleted one by one."""
    handled, seq = 0, 1
    waited = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than)
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return handled
        assert msg.seq is not None
        assert msg.data is not None
        seq = msg.seq + 1
        if msg.time is not None and msg.time > waited:
            return handled
        delivery = Delivery(msg.seq, 1, subject)
        outcome = await dispatch(
            msg.data, delivery, handler, max_deliver=1, retry_delay=0.0, seen=RecentIds()
        )
        if isinstance(outcome, Retry):
            continue
        if isinstance(outcome, Bury):
            await bury(subject, msg.seq, msg.data, outcome.reason)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_msg(stream, msg.seq)
        handled += 1
