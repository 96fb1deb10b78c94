"""The outbox: the commands a service's appends recorded, sent after them, in order.

A batch's commands are recorded (``CommandsIssued``) in its atomic append and sent only
once it has landed, by one task that goes on after the decision lock is given back. A
batch with commands is appended only once those of the batch before it are out (or
recorded again in it), so only the last such batch's records can hold unsent commands:
a restarted service sends those again (their ids are fixed: nothing is done twice).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from schemas import Envelope
from schemas.service import CommandsIssued
from shared.bus import BATCH_LIMIT, Bus, BusUnavailable
from shared.effects import Batch, issued

log = structlog.get_logger("vplane.runtime")

# Commands sent with their acknowledgements in flight together, in order.
SEND_CHUNK = 256


class Outbox:
    def __init__(self, bus: Bus, service: str, now: Callable[[], float]) -> None:
        self._bus = bus
        self._service = service
        self._now = now
        # Commands appended and not yet sent, and the one task sending them.
        self._unsent: list[Envelope[Any]] = []
        self._sender: asyncio.Task[None] | None = None
        # The records of the last append with commands (only they can be unsent).
        self._last: list[CommandsIssued] = []
        # Records of appends that failed without saying whether they landed: their
        # commands are sent, as logged, once the log shows them.
        self._in_doubt: set[uuid.UUID] = set()

    def logged(self, record_id: uuid.UUID, record: CommandsIssued) -> None:
        """One of the service's records, seen in the log."""
        if record_id in self._in_doubt:
            self._in_doubt.discard(record_id)
            self._unsent = [*self._unsent, *issued(record)]
        same = self._last and self._last[0].batch == record.batch
        self._last = [*self._last, record] if same else [record]

    def doubt(self, records: set[uuid.UUID]) -> None:
        """These records' append may have landed without saying so."""
        self._in_doubt |= records

    def settled(self, records: set[uuid.UUID]) -> None:
        """These records' append landed, and said so."""
        self._in_doubt -= records

    async def resend_last(self) -> None:
        """After a rebuild: send the last append's commands again."""
        self._unsent = [env for record in self._last for env in issued(record)]
        await self._flush()

    async def before(self, batch: Batch) -> None:
        """Before a batch with commands is appended: the commands still unsent are sent
        first, or recorded again in it (first, so that a restart sends them in the order
        they were decided), or, when it has no room for one more record, sent now."""
        if not (batch.commands and self._unsent):
            return
        await self.sent()
        if not self._unsent:
            return
        if len(batch.events) >= BATCH_LIMIT:
            await self.send_soon()
            return
        carried = CommandsIssued(
            service=self._service,
            commands=[c.encode().decode() for c in self._unsent],
            batch=batch.id,
        )
        env = Envelope.wrap(carried, producer=self._service, sim_time=self._now())
        batch.events.insert(0, env)
        batch.expected = {at + 1: version for at, version in batch.expected.items()}
        batch.carried.add(env.id)

    def after(self, batch: Batch, *, landed_before: bool) -> None:
        """A batch is in the log: its commands go out once the lock is given back, while
        the next decision is taken (whoever took this one waits with ``sent()``)."""
        if not batch.commands:
            return
        # Appended before: the log's records gave their commands to the outbox.
        if not landed_before:
            self._unsent = [*self._unsent, *batch.commands]
        self.send_soon()

    def send_soon(self) -> asyncio.Task[None]:
        """The task sending the unsent commands in order, started if none is."""
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._flush(), name="outbox-send")
            self._sender.add_done_callback(_told)
        return self._sender

    async def sent(self) -> None:
        """Wait for the sending in progress, whatever its end: what it could not send
        stays unsent, and ``retry`` tries again."""
        sender = self._sender
        if sender is not None and not sender.done():
            await asyncio.wait([sender])

    async def retry(self) -> None:
        """A step of the outbox loop: its failure is the loop's (counted, and excused
        while the broker is away)."""
        if self._unsent:
            await asyncio.shield(self.send_soon())

    @property
    def sending(self) -> asyncio.Task[None] | None:
        return self._sender

    async def _flush(self) -> None:
        while self._unsent:
            chunk = self._unsent[:SEND_CHUNK]
            await self._bus.send_many(chunk)
            # By id: the log may have added more meanwhile.
            sent = {env.id for env in chunk}
            self._unsent = [env for env in self._unsent if env.id not in sent]


def _told(sender: asyncio.Task[None]) -> None:
    """A failed send is retried by the outbox loop, which says so while the broker is
    away; any other failure is logged here."""
    if sender.cancelled():
        return
    err = sender.exception()
    if err is not None and not isinstance(err, BusUnavailable):
        log.warning("sending commands failed; the outbox tries again", error=repr(err))
