"""A scheduler's state as a fold: the pool ledger, its queue of workloads, what it placed
and moved, and the rounds of both schedulers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from schemas import Envelope, Message
from schemas.pool import CapacityReleased, Owner
from schemas.scheduling import (
    CopyRequested,
    CopyScheduled,
    MigrationRefused,
    MigrationRequested,
    MigrationScheduled,
    PlacementRequested,
    PlacementRules,
    RoundCompleted,
    VmPlaced,
    VmRaised,
)
from schemas.service import CommandRejected
from schemas.transfers import (
    CopyAborted,
    CopyCompleted,
    CopyStarted,
    MigrationAborted,
    MigrationCompleted,
    MigrationStarted,
)
from schemas.vm import VmCreated, VmDestroyed
from services.scheduler.ledger import Ledger
from services.scheduler.ledger import evolve as evolve_ledger

Work = PlacementRequested | MigrationRequested | CopyRequested
NO_RULES = PlacementRules()
K = TypeVar("K")
V = TypeVar("V")


def work_key(work: Work) -> str:
    return work.aggregate()


def start_id(transfer: str) -> uuid.UUID:
    """The one id of the command that asks a host to start a migration or a copy."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:start:{transfer}")


def outgoing(transfer: str) -> str:
    """The reservation of a transfer's bandwidth on its source."""
    return f"{transfer}-out"


def incoming(transfer: str) -> str:
    """The reservation of a transfer's capacity and bandwidth on its target."""
    return f"{transfer}-in"


@dataclass(frozen=True, slots=True)
class SchedulerState:
    priority: Owner
    ledger: Ledger = field(default_factory=Ledger)
    # This scheduler's workloads not yet placed or refused, in arrival order.
    pending: Mapping[str, Envelope[Work]] = field(default_factory=dict)
    placed: Mapping[str, VmPlaced] = field(default_factory=dict)
    requests: Mapping[str, Envelope[PlacementRequested]] = field(default_factory=dict)
    # Placed with less than asked for, and not raised yet.
    degraded: frozenset[str] = frozenset()
    # Every VM either scheduler was asked for: names are unique across priorities.
    known: frozenset[str] = frozenset()
    created: frozenset[str] = frozenset()
    rounds: Mapping[Owner, int] = field(default_factory=dict)
    # Work of either priority asked for and not yet placed, scheduled or refused: the
    # low scheduler waits for the high one's round only when the high one has work.
    queued: Mapping[str, Owner] = field(default_factory=dict)
    # Migrations and copies: of either scheduler (ids are unique), and this one's.
    transfers: frozenset[str] = frozenset()
    moving: Mapping[str, str] = field(default_factory=dict)  # VM -> its migration
    heading: Mapping[str, str] = field(default_factory=dict)  # VM -> its migration's target
    migrations: Mapping[str, MigrationScheduled] = field(default_factory=dict)
    copies: Mapping[str, CopyScheduled] = field(default_factory=dict)
    started: frozenset[str] = frozenset()
    # How this scheduler's transfers ended (True: completed), and which of them have
    # had their reservations settled since.
    outcomes: Mapping[str, bool] = field(default_factory=dict)
    settled: frozenset[str] = frozenset()
    starts: Mapping[uuid.UUID, str] = field(default_factory=dict)
    # Destroyed VMs whose reservations are still to be released.
    destroyed: frozenset[str] = frozenset()
    # The placement rules of every VM that has some: a migration keeps to them.
    rules: Mapping[str, PlacementRules] = field(default_factory=dict)

    def unsettled(self) -> list[str]:
        return [t for t in self.outcomes if t not in self.settled]

    def scheduled(self, transfer: str) -> MigrationScheduled | CopyScheduled | None:
        return self.migrations.get(transfer) or self.copies.get(transfer)

    def has_work(self, owner: Owner) -> bool:
        return any(o is owner for o in self.queued.values())


def evolve(state: SchedulerState, seq: int, env: Envelope[Message]) -> SchedulerState:
    event = env.data
    state = replace(state, ledger=evolve_ledger(state.ledger, seq, event))
    queued = _queued(state.queued, event)
    if queued is not state.queued:
        state = replace(state, queued=queued)
    return _evolve(state, env)


def _queued(queued: Mapping[str, Owner], event: Message) -> Mapping[str, Owner]:
    match event:
        case PlacementRequested() | MigrationRequested() | CopyRequested():
            return {**queued, work_key(event): event.priority}
        case VmPlaced():
            key = work_key_of_vm(event.vm)
        case MigrationScheduled() | CopyScheduled() | MigrationRefused():
            key = event.aggregate()
        case CommandRejected():
            key = event.about
        case _:
            return queued
    return _without(queued, key) if key in queued else queued


def _evolve(state: SchedulerState, env: Envelope[Message]) -> SchedulerState:  # noqa: PLR0911, PLR0912
    event = env.data
    mine = getattr(event, "priority", None) == state.priority
    match event:
        case PlacementRequested():
            state = replace(state, known=state.known | {event.vm})
            if event.rules != NO_RULES:
                state = replace(state, rules={**state.rules, event.vm: event.rules})
            if mine:
                request: Envelope[PlacementRequested] = env  # type: ignore[assignment]
                return replace(
                    state,
                    pending={**state.pending, work_key(event): request},
                    requests={**state.requests, event.vm: request},
                )
        case MigrationRequested() | CopyRequested():
            ident = event.migration if isinstance(event, MigrationRequested) else event.copy_id
            state = replace(state, transfers=state.transfers | {ident})
            if isinstance(event, MigrationRequested):
                state = replace(state, moving={**state.moving, event.vm: event.migration})
            if mine:
                work: Envelope[Work] = env  # type: ignore[assignment]
                return replace(state, pending={**state.pending, work_key(event): work})
        case VmPlaced() if mine:
            degraded = state.degraded | {event.vm} if event.degraded else state.degraded
            return replace(
                state,
                pending=_without(state.pending, work_key_of_vm(event.vm)),
                placed={**state.placed, event.vm: event},
                degraded=degraded,
            )
        case VmRaised():
            return replace(state, degraded=state.degraded - {event.vm})
        case MigrationScheduled() if not mine:
            return replace(state, heading={**state.heading, event.vm: event.target})
        case MigrationScheduled():
            return replace(
                state,
                heading={**state.heading, event.vm: event.target},
                pending=_without(state.pending, f"migration/{event.migration}"),
                migrations={**state.migrations, event.migration: event},
                starts={**state.starts, start_id(event.migration): event.migration},
            )
        case CopyScheduled() if mine:
            return replace(
                state,
                pending=_without(state.pending, f"copy/{event.copy_id}"),
                copies={**state.copies, event.copy_id: event},
                starts={**state.starts, start_id(event.copy_id): event.copy_id},
            )
        case MigrationRefused():
            return _ended(
                replace(state, pending=_without(state.pending, event.aggregate())), event.vm
            )
        case MigrationStarted() | CopyStarted():
            return replace(state, started=state.started | {_transfer(event)})
        case MigrationCompleted() | MigrationAborted() | CopyCompleted() | CopyAborted():
            ident = _transfer(event)
            vm = event.vm if isinstance(event, MigrationCompleted | MigrationAborted) else None
            state = _ended(state, vm)
            if state.scheduled(ident) is not None:
                completed = isinstance(event, MigrationCompleted | CopyCompleted)
                return replace(state, outcomes={**state.outcomes, ident: completed})
        case VmDestroyed():
            return replace(state, destroyed=state.destroyed | {event.vm})
        case CapacityReleased() if event.reservation in state.destroyed:
            return replace(state, destroyed=state.destroyed - {event.reservation})
        case CapacityReleased() if event.reservation.endswith("-out"):
            # The source's bandwidth is released last: the transfer is settled.
            ident = event.reservation.removesuffix("-out")
            if ident in state.outcomes:
                return replace(state, settled=state.settled | {ident})
        case CommandRejected() if event.command_type in ("PlaceVm", "CopyFile"):
            return replace(state, pending=_without(state.pending, event.about))
        case CommandRejected() if event.command_id in state.starts:
            # The host refused to start it: as good as aborted.
            ident = state.starts[event.command_id]
            scheduled = state.scheduled(ident)
            vm = scheduled.vm if isinstance(scheduled, MigrationScheduled) else None
            return replace(_ended(state, vm), outcomes={**state.outcomes, ident: False})
        case VmCreated():
            return replace(state, created=state.created | {event.vm})
        case RoundCompleted():
            done = max(event.round, state.rounds.get(event.priority, -1))
            return replace(state, rounds={**state.rounds, event.priority: done})
    return state


def work_key_of_vm(vm: str) -> str:
    return f"vm/{vm}"


def _transfer(
    event: MigrationStarted
    | MigrationCompleted
    | MigrationAborted
    | CopyStarted
    | CopyCompleted
    | CopyAborted,
) -> str:
    return (
        event.migration
        if isinstance(event, MigrationStarted | MigrationCompleted | MigrationAborted)
        else event.copy_id
    )


def _ended(state: SchedulerState, vm: str | None) -> SchedulerState:
    if vm is None or vm not in state.moving:
        return state
    return replace(state, moving=_without(state.moving, vm), heading=_without(state.heading, vm))


def _without(mapping: Mapping[K, V], key: K) -> dict[K, V]:
    return {k: v for k, v in mapping.items() if k != key}
