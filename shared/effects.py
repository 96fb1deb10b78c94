"""Carrying outcomes out: one id scheme, one atomic append, then the commands (outbox).

Ids derive from an outcome's cause, its key and a position, so a decision taken again
after a crash produces the same envelopes and the log keeps one copy. The events of
the outcomes carried out together, and a ``CommandsIssued`` record of their commands,
land in one atomic append; the commands are sent only after it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope, Message
from schemas.envelope import MAX_ENVELOPE_BYTES, EnvelopeTooLarge
from schemas.service import CommandsIssued
from shared.bus import BATCH_LIMIT
from shared.codec import decode
from shared.outcome import Outcome

_STEPS = uuid.uuid5(uuid.NAMESPACE_URL, "vplane:steps")
# The most commands one outbox record holds (an encoded command is about 600 bytes), and
# the most bytes (escaped, as the record holds them) below an envelope's limit.
RECORD_COMMANDS = 128
RECORD_BYTES = MAX_ENVELOPE_BYTES - 16 * 1024


def derive(service: str, outcome: Outcome, what: str) -> uuid.UUID:
    """The id of the ``what`` (``e0``, ``c1``, ``outbox``...) of an outcome of ``service``."""
    base = outcome.cause.id if outcome.cause is not None else _STEPS
    return uuid.uuid5(base, f"{service}/{outcome.key}/{what}")


def named(kind: str, *parts: object) -> str:
    """The name a decision gives what it starts (a migration: ``mnt-…``), fixed by what
    it is about, so a decision taken again names it again the same way."""
    key = ":".join(str(p) for p in parts)
    return f"{kind}-{uuid.uuid5(uuid.NAMESPACE_URL, f'vplane:{key}').hex[:16]}"


def first_id(service: str, outcome: Outcome) -> uuid.UUID:
    """The id of an outcome's first envelope in the log: its first event, or else its
    outbox record; an outcome whose first envelope is there has landed."""
    return derive(service, outcome, "e0" if outcome.events else "outbox")


@dataclass
class Batch:
    """Envelopes for one atomic append, the commands to send after it, and the expected
    versions by position."""

    events: list[Envelope[Any]] = field(default_factory=list)
    commands: list[Envelope[Any]] = field(default_factory=list)
    expected: dict[int, int] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    # Where the batch first writes each aggregate.
    first: dict[str, int] = field(default_factory=dict)
    # Outbox records of commands still unsent from earlier appends, recorded again.
    carried: set[uuid.UUID] = field(default_factory=set)
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    # Commands of outcomes with events, each with its outcome and place in it, waiting to
    # be recorded together (one record for many decisions, not one each).
    sharing: list[tuple[Outcome, int, Envelope[Any]]] = field(default_factory=list)

    def size(self) -> int:
        """Its events, with the records of the commands waiting for one."""
        return len(self.events) + _records(len(self.sharing))

    def record(self, service: str, sim_time: float) -> None:
        """Record the commands waiting, in order."""
        texts = [c.encode().decode() for _, _, c in self.sharing]
        for part in record_parts(texts):
            first, position, _ = self.sharing[part[0]]
            record = CommandsIssued(
                service=service, commands=[texts[i] for i in part], batch=self.id
            )
            self.events.append(_wrap(service, first, record, f"outbox:c{position}", sim_time))
        self.sharing = []


def batches(
    service: str,
    outcomes: Sequence[Outcome],
    sim_time: float,
    landed: Callable[[uuid.UUID], bool],
) -> list[Batch]:
    """The outcomes not yet in the log, in appends of at most BATCH_LIMIT events; one
    outcome never spans two appends. The commands of outcomes with events are recorded
    together; an outcome of commands alone has a record of its own (its first envelope,
    which tells that it landed), after those of the outcomes before it."""
    out: list[Batch] = []
    current = Batch()
    for outcome in outcomes:
        events = list(outcome.envelopes) or envelopes_of(service, outcome, sim_time)
        commands = [
            _wrap(service, outcome, c, f"c{i}", sim_time) for i, c in enumerate(outcome.commands)
        ]
        if (events or commands) and landed(first_id(service, outcome)):
            continue
        waiting = len(current.sharing)
        records = _records(waiting + len(commands)) - _records(waiting) if events else 1
        if (
            current.outcomes
            and current.size() + len(events) + (records if commands else 0) > BATCH_LIMIT
        ):
            current.record(service, sim_time)
            out.append(current)
            current = Batch()
        for i, env in enumerate(events):
            aggregate = env.subject
            written = current.first.setdefault(aggregate, len(current.events) + i)
            # An expectation is the aggregate's version in the log before the append (the
            # outcomes were decided before any of them landed), so the first one guards
            # the aggregate where the batch first writes it, even if an earlier outcome
            # with no expectation does: a guard placed after that write could never hold.
            if aggregate in outcome.expect and written not in current.expected:
                current.expected[written] = outcome.expect[aggregate]
        current.events += events
        if commands and events:
            current.sharing += [(outcome, i, c) for i, c in enumerate(commands)]
        elif commands:
            current.record(service, sim_time)
            texts = [c.encode().decode() for c in commands]
            for n, part in enumerate(record_parts(texts, limit=None)):
                record = CommandsIssued(
                    service=service, commands=[texts[i] for i in part], batch=current.id
                )
                # The first is named as the outcome's first envelope (``first_id``).
                what = "outbox" if n == 0 else f"outbox:{n}"
                current.events.append(_wrap(service, outcome, record, what, sim_time))
        current.commands += commands
        current.outcomes.append(outcome)
    if current.outcomes:
        current.record(service, sim_time)
        out.append(current)
    return out


def _records(commands: int) -> int:
    return -(-commands // RECORD_COMMANDS)


def record_parts(texts: Sequence[str], limit: int | None = RECORD_COMMANDS) -> list[list[int]]:
    """The encoded commands' positions grouped into outbox records, in order: each at
    most ``limit`` commands and RECORD_BYTES as a record holds them (escaped)."""
    parts: list[list[int]] = []
    size = 0
    for i, text in enumerate(texts):
        escaped = len(json.dumps(text))
        if escaped > RECORD_BYTES:
            raise EnvelopeTooLarge(
                f"a command of {escaped} bytes does not fit an outbox record "
                f"({RECORD_BYTES}): send its contents in several commands"
            )
        full = bool(parts) and limit is not None and len(parts[-1]) >= limit
        if not parts or full or size + escaped > RECORD_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(i)
        size += escaped + 1
    return parts


def envelopes_of(service: str, outcome: Outcome, sim_time: float) -> list[Envelope[Any]]:
    """An outcome's events in the envelopes they are appended in."""
    return [_wrap(service, outcome, e, f"e{i}", sim_time) for i, e in enumerate(outcome.events)]


def _wrap(
    service: str, outcome: Outcome, message: Message, what: str, sim_time: float
) -> Envelope[Any]:
    return Envelope.wrap(
        message,
        producer=service,
        caused_by=outcome.cause,
        sim_time=sim_time,
        id=derive(service, outcome, what),
    )


def issued(record: CommandsIssued) -> list[Envelope[Any]]:
    """The command envelopes a record holds, as they were (and are again) sent."""
    return [decode(text.encode()) for text in record.commands]
