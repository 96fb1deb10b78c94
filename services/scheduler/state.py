"""A scheduler's state as a fold: the pool ledger, its queue, what it placed, the rounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import PlacementRequested, RoundCompleted, VmPlaced
from schemas.service import CommandRejected
from schemas.vm import VmCreated
from services.scheduler.ledger import Ledger
from services.scheduler.ledger import evolve as evolve_ledger


@dataclass(frozen=True, slots=True)
class SchedulerState:
    priority: Owner
    ledger: Ledger = field(default_factory=Ledger)
    # Requests of this scheduler's priority not yet placed or refused, in arrival order.
    pending: Mapping[str, Envelope[PlacementRequested]] = field(default_factory=dict)
    placed: Mapping[str, VmPlaced] = field(default_factory=dict)
    requests: Mapping[str, Envelope[PlacementRequested]] = field(default_factory=dict)
    # Every VM either scheduler was asked for: names are unique across priorities.
    known: frozenset[str] = frozenset()
    created: frozenset[str] = frozenset()
    rounds: Mapping[Owner, int] = field(default_factory=dict)


def evolve(state: SchedulerState, seq: int, env: Envelope[Message]) -> SchedulerState:
    event = env.data
    state = replace(state, ledger=evolve_ledger(state.ledger, seq, event))
    if isinstance(event, PlacementRequested):
        state = replace(state, known=state.known | {event.vm})
    match event:
        case PlacementRequested() if event.priority == state.priority:
            request: Envelope[PlacementRequested] = env  # type: ignore[assignment]
            return replace(
                state,
                pending={**state.pending, event.vm: request},
                requests={**state.requests, event.vm: request},
            )
        case VmPlaced():
            pending = {k: v for k, v in state.pending.items() if k != event.vm}
            return replace(state, pending=pending, placed={**state.placed, event.vm: event})
        case CommandRejected() if event.command_type == "PlaceVm":
            vm = event.about.removeprefix("vm/")
            return replace(state, pending={k: v for k, v in state.pending.items() if k != vm})
        case VmCreated():
            return replace(state, created=state.created | {event.vm})
        case RoundCompleted():
            done = max(event.round, state.rounds.get(event.priority, -1))
            return replace(state, rounds={**state.rounds, event.priority: done})
    return state
