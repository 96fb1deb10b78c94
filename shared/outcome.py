"""What a decision returns: the events to append and the commands to send, as data.

Services decide and return outcomes; the runtime carries them out. An outcome names its
cause (the command, sample or logged event that led to it, or nothing for a service's
own step) and a key that tells it apart from the cause's other outcomes; every id is
derived from those and a position, by the runtime alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas import Command, Envelope, Event, Message, Query


class Folded(Protocol):
    """A decision's events folded into the service's state as it was decided (a scratch
    fold, each decision seeing the ones before it)."""

    def adopt(self, entries: Sequence[tuple[int, Envelope[Message]]]) -> bool:
        """The entries of an append (in log order, with their sequences) have landed:
        make the state what folding them would, or say it cannot (they are then folded)."""
        ...


@dataclass(frozen=True)
class Outcome:
    events: Sequence[Event] = ()
    commands: Sequence[Command] = ()
    cause: Envelope[Any] | None = None
    # Without a cause, the key alone names the outcome among all this service's (in
    # every process of it): it must say what the outcome is about (``register:h1``).
    key: str = ""
    # Aggregate -> the version the decision was made at: appended only if no other
    # writer moved it meanwhile; else the runtime catches up and decides again.
    expect: Mapping[str, int] = field(default_factory=dict)
    # Telemetry to publish once the events are in the log (bounded retention, no ids).
    samples: Sequence[Message] = ()
    # The emulated time the outcome's messages carry, when not the service's clock now.
    sim_time: float | None = None
    # Bulk bytes to put on data flows before the events that say they are there.
    data: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    # In-memory bookkeeping a service does only once the outcome has landed (say, a
    # detector's streak), so that a decision that failed to land is taken again whole.
    on_landed: Sequence[Callable[[], None]] = ()
    # Log filters (as a fold's) whose fold the decision may have been taken behind: a
    # command is sent after its cause lands, but a follower may not have folded that cause
    # yet. The runtime folds what the log holds of them, and decides again, once.
    stale: Sequence[str] = ()
    # The events in their envelopes, when the decision wrapped them already
    # (``shared.effects.envelopes_of``) to fold them as it decided; with ``folded``, what
    # takes that fold once they land, instead of folding them again.
    envelopes: Sequence[Envelope[Any]] = ()
    folded: Folded | None = None
    # Questions for other services (request/reply), asked once the events have landed
    # and the commands are sent; each reply, or a QueryFailed when none came, is handed
    # to the service's ``replies``, which decides what it changes.
    queries: Sequence[Query] = ()

    @property
    def empty(self) -> bool:
        return not (self.events or self.commands or self.samples or self.data or self.queries)


Outcomes = Outcome | Sequence[Outcome]
# A decision taken only once the ones before it have landed: a loop's step returns a
# plan of them when each must see what the one before it changed (a round's placements).
Decision = Callable[[], "Outcomes | None"]
Plan = Sequence["Outcome | Decision"]


def as_list(outcomes: Outcomes | None) -> list[Outcome]:
    if outcomes is None:
        return []
    if isinstance(outcomes, Outcome):
        return [outcomes]
    return list(outcomes)


def answer(cause: Envelope[Message], *events: Event, commands: Sequence[Command] = ()) -> Outcome:
    """The outcome that answers ``cause`` with ``events`` (and sends ``commands``)."""
    return Outcome(events=events, commands=commands, cause=cause)


# How many version conflicts the decision being taken has met so far (the runtime sets
# it): a decision that reports its conflicts (a placement) reads it.
attempt: ContextVar[int] = ContextVar("attempt", default=0)
