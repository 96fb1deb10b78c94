"""A scheduler's state as a fold: the pool ledger, its queue of workloads, what it placed
and moved, and the rounds of both schedulers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TypeVar

from immutables import Map

from schemas import Envelope, Message
from schemas.ft import FailoverRequested, ProtectionEnded, ProtectionRequested, VmFailedOver
from schemas.ha import HostFailed, HostReturned, VmRestarted, VmRestartFailed
from schemas.pool import CapacityReleased, CapacityReserved, Owner, vcpus_covered
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
    VmResizeRequested,
)
from schemas.service import CommandRejected, CommandsIssued
from schemas.transfers import (
    CopyAborted,
    CopyCompleted,
    CopyStarted,
    MigrationAborted,
    MigrationCompleted,
    MigrationStarted,
    StartCopy,
    StartMigration,
)
from schemas.vm import VmCreated, VmDestroyed, VmResized
from services.scheduler.ledger import Ledger
from services.scheduler.ledger import evolve as evolve_ledger
from services.scheduler.ledger import sequenced as sequenced_ledger
from shared.codec import decode, encoded_type
from shared.frozen import changed

Work = PlacementRequested | MigrationRequested | CopyRequested
NO_RULES = PlacementRules()
# Persistent maps (a hash array mapped trie): a fold step changes one entry in O(log n)
# instead of copying the whole map, which at thousands of VMs was most of the work.
Set = Map[str, bool]
K = TypeVar("K")
V = TypeVar("V")


def work_key(work: Work) -> str:
    return work.aggregate()


def outgoing(transfer: str) -> str:
    """The reservation of a transfer's bandwidth on its source."""
    return f"{transfer}-out"


def incoming(transfer: str) -> str:
    """The reservation of a transfer's capacity and bandwidth on its target."""
    return f"{transfer}-in"


# No slots: fold steps change it with ``changed`` (shared/frozen.py).
@dataclass(frozen=True)
class SchedulerState:
    priority: Owner
    ledger: Ledger = field(default_factory=Ledger)
    # This scheduler's workloads not yet placed or refused, with their log sequences.
    pending: Map[str, tuple[int, Envelope[Work]]] = field(default_factory=Map)
    placed: Map[str, VmPlaced] = field(default_factory=Map)
    requests: Map[str, Envelope[PlacementRequested]] = field(default_factory=Map)
    # Placed with less than asked for, and not raised yet.
    degraded: Set = field(default_factory=Map)
    # Every VM either scheduler was asked for: names are unique across priorities.
    known: Set = field(default_factory=Map)
    created: Set = field(default_factory=Map)
    rounds: Map[Owner, int] = field(default_factory=Map)
    # Work of either priority asked for and not yet placed, scheduled or refused: the
    # low scheduler waits for the high one's round only when the high one has work.
    queued: Map[str, Owner] = field(default_factory=Map)
    # The command that asked for each queued piece of work: only a refusal of that command
    # ends it (refusing a second request for the same VM leaves the first one queued).
    asked: Map[str, uuid.UUID] = field(default_factory=Map)
    # Migrations and copies: of either scheduler (ids are unique), and this one's.
    transfers: Set = field(default_factory=Map)
    moving: Map[str, str] = field(default_factory=Map)  # VM -> its migration
    heading: Map[str, str] = field(default_factory=Map)  # VM -> its migration's target
    migrations: Map[str, MigrationScheduled] = field(default_factory=Map)
    copies: Map[str, CopyScheduled] = field(default_factory=Map)
    started: Set = field(default_factory=Map)
    # How this scheduler's transfers ended (True: completed), and which of them have
    # had their reservations settled since.
    outcomes: Map[str, bool] = field(default_factory=Map)
    settled: Set = field(default_factory=Map)
    starts: Map[uuid.UUID, str] = field(default_factory=Map)
    # Destroyed VMs whose reservations are still to be released.
    destroyed: Set = field(default_factory=Map)
    # The placement rules of every VM that has some: a migration keeps to them.
    rules: Map[str, PlacementRules] = field(default_factory=Map)
    # Where every VM runs, of either priority (created with --host too).
    hosted: Map[str, str] = field(default_factory=Map)
    # Hosts declared failed by their silence, and VMs of this scheduler that could not be
    # restarted since (told once; tried again each round).
    silent: Map[str, Envelope[HostFailed]] = field(default_factory=Map)
    unrestarted: Set = field(default_factory=Map)
    # VMs under FT protection (their FT service moves them when their host fails, not an
    # HA restart), and their failovers of this priority whose reservation is to move.
    protected: Set = field(default_factory=Map)
    failovers: Map[str, Envelope[FailoverRequested]] = field(default_factory=Map)
    # Every VM's size as its host runs it (vCPUs, MiB), and the VMs whose host was asked
    # to resize them and has not answered yet.
    sizes: Map[str, tuple[int, int]] = field(default_factory=Map)
    resizing: Set = field(default_factory=Map)
    # The VMs whose reservation holds more than their host runs them at: each round
    # looks at these, not at every VM it has placed.
    oversized: Set = field(default_factory=Map)

    def queue(self) -> list[Envelope[Work]]:
        """The pending work in arrival order."""
        return [env for _, env in sorted(self.pending.values(), key=lambda item: item[0])]

    def unsettled(self) -> list[str]:
        return [t for t in self.outcomes if t not in self.settled]

    def scheduled(self, transfer: str) -> MigrationScheduled | CopyScheduled | None:
        return self.migrations.get(transfer) or self.copies.get(transfer)

    def landed(self, vm: str) -> str | None:
        """Where ``vm`` went, when a migration of it completed and its reservation has not
        moved yet (the next round settles it)."""
        for ident in self.unsettled():
            scheduled = self.migrations.get(ident)
            if scheduled is not None and scheduled.vm == vm and self.outcomes[ident]:
                return scheduled.target
        return None

    def has_work(self, owner: Owner) -> bool:
        return any(o is owner for o in self.queued.values())


def evolve(state: SchedulerState, seq: int, env: Envelope[Message]) -> SchedulerState:
    event = env.data
    ledger = evolve_ledger(state.ledger, seq, event)
    if ledger is not state.ledger:
        state = changed(state, ledger=ledger)
    state = _queued(state, env)
    state = _hosted(state, env)
    state = _protected(state, env)
    state = _sized(state, env.data)
    state = _evolve(state, seq, env)
    for vm in _sizing_of(event):
        state = _oversized(state, vm)
    return state


def sequenced(state: SchedulerState, seq: int, env: Envelope[Message]) -> SchedulerState:
    """A state that folded ``env`` ahead of the log (at a sequence below any), as if
    folded at ``seq``: the parts of ``evolve`` that keep an event's log sequence (the
    ledger's versions and maintenance visits, the queue's order)."""
    event = env.data
    ledger = sequenced_ledger(state.ledger, seq, event)
    if ledger is not state.ledger:
        state = changed(state, ledger=ledger)
    if isinstance(event, PlacementRequested | MigrationRequested | CopyRequested):
        key = work_key(event)
        waiting = state.pending.get(key)
        if waiting is not None and waiting[1] is env:
            state = changed(state, pending=state.pending.set(key, (seq, waiting[1])))
    return state


def _sizing_of(event: Message) -> tuple[str, ...]:
    """The VMs whose size or reservation the event changes."""
    match event:
        case VmCreated() | VmResized() | VmRestarted() | VmDestroyed():
            return (event.vm,)
        case CapacityReserved():
            return (
                (event.reservation,)
                if event.replaces is None
                else (
                    event.reservation,
                    event.replaces,
                )
            )
        case CapacityReleased():
            return (event.reservation,)
    return ()


def _oversized(state: SchedulerState, vm: str) -> SchedulerState:
    held, size = state.ledger.held(vm), state.sizes.get(vm)
    over = (
        held is not None
        and size is not None
        and (vcpus_covered(held.cpu_mhz) > size[0] or held.mem_mib > size[1])
    )
    if over == (vm in state.oversized):
        return state
    oversized = state.oversized.set(vm, True) if over else state.oversized.delete(vm)
    return changed(state, oversized=oversized)


def _sized(state: SchedulerState, event: Message) -> SchedulerState:
    match event:
        case VmCreated() | VmResized() | VmRestarted():
            return changed(
                state,
                sizes=state.sizes.set(event.vm, (event.cpu, event.mem_mib)),
                resizing=_without(state.resizing, event.vm),
            )
        case VmResizeRequested() | VmRaised():
            return changed(state, resizing=state.resizing.set(event.vm, True))
        case CommandRejected() if event.command_type == "ResizeVm":
            return changed(state, resizing=_without(state.resizing, event.about[len("vm/") :]))
        case VmDestroyed():
            return changed(state, sizes=_without(state.sizes, event.vm))
    return state


def _hosted(state: SchedulerState, env: Envelope[Message]) -> SchedulerState:  # noqa: PLR0911 - one case per event
    """Where VMs run, which hosts are silent, and which VMs wait for a restart."""
    event = env.data
    match event:
        case VmCreated():
            return changed(state, hosted=state.hosted.set(event.vm, event.host))
        case VmRestarted():
            return changed(
                state,
                hosted=state.hosted.set(event.vm, event.host),
                unrestarted=_without(state.unrestarted, event.vm),
            )
        case MigrationCompleted() if event.vm in state.hosted:
            return changed(state, hosted=state.hosted.set(event.vm, event.target))
        case VmDestroyed():
            return changed(
                state,
                hosted=_without(state.hosted, event.vm),
                unrestarted=_without(state.unrestarted, event.vm),
            )
        case HostFailed():
            failed: Envelope[HostFailed] = env  # type: ignore[assignment]
            return changed(state, silent=state.silent.set(event.host, failed))
        case HostReturned():
            return changed(state, silent=_without(state.silent, event.host))
        case VmRestartFailed() if event.priority == state.priority.value:
            return changed(state, unrestarted=state.unrestarted.set(event.vm, True))
    return state


def _protected(state: SchedulerState, env: Envelope[Message]) -> SchedulerState:
    """Which VMs FT protects, and the failovers that move a reservation of this one's."""
    event = env.data
    match event:
        case ProtectionRequested():
            return changed(state, protected=state.protected.set(event.vm, True))
        case ProtectionEnded():
            state = changed(state, protected=_without(state.protected, event.vm))
            backup = event.backup
            if backup is not None and backup in state.placed and backup not in state.hosted:
                # Placed, never created (its host refused, or failed first): its room goes
                # back as a destroyed VM's does.
                return changed(state, destroyed=state.destroyed.set(backup, True))
            return state
        case FailoverRequested() if event.priority == state.priority.value:
            asked: Envelope[FailoverRequested] = env  # type: ignore[assignment]
            return changed(state, failovers=state.failovers.set(event.vm, asked))
        case VmFailedOver():
            # The backup is the VM now: its name is no workload any more.
            return changed(
                state,
                hosted=_without(state.hosted, event.backup).set(event.vm, event.host),
                placed=_without(state.placed, event.backup),
                requests=_without(state.requests, event.backup),
                failovers=_without(state.failovers, event.vm),
            )
    return state


def _queued(state: SchedulerState, env: Envelope[Message]) -> SchedulerState:
    event = env.data
    match event:
        case PlacementRequested() | MigrationRequested() | CopyRequested():
            key = work_key(event)
            asked = state.asked.set(key, env.causation_id or env.id)
            return changed(state, queued=state.queued.set(key, event.priority), asked=asked)
        case VmPlaced():
            key = work_key_of_vm(event.vm)
        case MigrationScheduled() | CopyScheduled() | MigrationRefused():
            key = event.aggregate()
        case CommandRejected() if refuses_queued(state, event):
            key = event.about
        case _:
            return state
    if key not in state.queued:
        return state
    return changed(state, queued=_without(state.queued, key), asked=_without(state.asked, key))


def refuses_queued(state: SchedulerState, event: CommandRejected) -> bool:
    """The refusal is of the command that asked for queued work, not of another request
    that named the same VM or copy."""
    return state.asked.get(event.about) == event.command_id


def _evolve(state: SchedulerState, seq: int, env: Envelope[Message]) -> SchedulerState:  # noqa: PLR0911, PLR0912
    event = env.data
    mine = getattr(event, "priority", None) == state.priority
    match event:
        case PlacementRequested():
            state = changed(state, known=state.known.set(event.vm, True))
            if event.rules != NO_RULES:
                state = changed(state, rules=state.rules.set(event.vm, event.rules))
            if mine:
                request: Envelope[PlacementRequested] = env  # type: ignore[assignment]
                return changed(
                    state,
                    pending=state.pending.set(work_key(event), (seq, request)),
                    requests=state.requests.set(event.vm, request),
                )
        case MigrationRequested() | CopyRequested():
            ident = event.migration if isinstance(event, MigrationRequested) else event.copy_id
            state = changed(state, transfers=state.transfers.set(ident, True))
            if isinstance(event, MigrationRequested):
                state = changed(state, moving=state.moving.set(event.vm, event.migration))
            if mine:
                work: Envelope[Work] = env  # type: ignore[assignment]
                return changed(state, pending=state.pending.set(work_key(event), (seq, work)))
        case VmPlaced() if mine:
            degraded = state.degraded.set(event.vm, True) if event.degraded else state.degraded
            return changed(
                state,
                pending=_without(state.pending, work_key_of_vm(event.vm)),
                placed=state.placed.set(event.vm, event),
                degraded=degraded,
            )
        case VmRaised():
            return changed(state, degraded=_without(state.degraded, event.vm))
        case MigrationScheduled() if not mine:
            return changed(state, heading=state.heading.set(event.vm, event.target))
        case MigrationScheduled():
            return changed(
                state,
                heading=state.heading.set(event.vm, event.target),
                pending=_without(state.pending, f"migration/{event.migration}"),
                migrations=state.migrations.set(event.migration, event),
            )
        case CopyScheduled() if mine:
            return changed(
                state,
                pending=_without(state.pending, f"copy/{event.copy_id}"),
                copies=state.copies.set(event.copy_id, event),
            )
        case CommandsIssued():
            # A host refuses a start by the command's id: learn which transfer it starts.
            starts = state.starts
            for command in _starts(event):
                if isinstance(command.data, StartMigration):
                    starts = starts.set(command.id, command.data.migration)
                elif isinstance(command.data, StartCopy):
                    starts = starts.set(command.id, command.data.copy_id)
            return state if starts is state.starts else changed(state, starts=starts)
        case MigrationRefused():
            return _ended(
                changed(state, pending=_without(state.pending, event.aggregate())), event.vm
            )
        case MigrationStarted() | CopyStarted():
            return changed(state, started=state.started.set(_transfer(event), True))
        case MigrationCompleted() | MigrationAborted() | CopyCompleted() | CopyAborted():
            ident = _transfer(event)
            vm = event.vm if isinstance(event, MigrationCompleted | MigrationAborted) else None
            state = _ended(state, vm)
            if state.scheduled(ident) is not None:
                completed = isinstance(event, MigrationCompleted | CopyCompleted)
                return changed(state, outcomes=state.outcomes.set(ident, completed))
        case VmDestroyed():
            return changed(state, destroyed=state.destroyed.set(event.vm, True))
        case CapacityReleased() if event.reservation in state.destroyed:
            return changed(state, destroyed=_without(state.destroyed, event.reservation))
        case CapacityReleased() if event.reservation.endswith("-out"):
            # The source's bandwidth is released last: the transfer is settled.
            ident = event.reservation.removesuffix("-out")
            if ident in state.outcomes:
                return changed(state, settled=state.settled.set(ident, True))
        case CommandRejected() if event.command_type in ("PlaceVm", "CopyFile"):
            return _unqueued(state, event)
        case CommandRejected() if event.command_id in state.starts:
            # The host refused to start it: as good as aborted.
            ident = state.starts[event.command_id]
            scheduled = state.scheduled(ident)
            vm = scheduled.vm if isinstance(scheduled, MigrationScheduled) else None
            return changed(_ended(state, vm), outcomes=state.outcomes.set(ident, False))
        case VmCreated():
            return changed(state, created=state.created.set(event.vm, True))
        case RoundCompleted():
            done = max(event.round, state.rounds.get(event.priority, -1))
            return changed(state, rounds=state.rounds.set(event.priority, done))
    return state


def _starts(record: CommandsIssued) -> list[Envelope[Message]]:
    """The commands of a record that may start a transfer, decoded (most are not)."""
    return [
        decode(raw)
        for raw in (text.encode() for text in record.commands)
        if encoded_type(raw) in _MAY_START
    ]


# A command not in the form Envelope.encode writes (None) is decoded to be sure.
_MAY_START = frozenset({"StartMigration", "StartCopy", None})


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
    return changed(state, moving=_without(state.moving, vm), heading=_without(state.heading, vm))


def _unqueued(state: SchedulerState, refusal: CommandRejected) -> SchedulerState:
    waiting = state.pending.get(refusal.about)
    if waiting is None or (waiting[1].causation_id or waiting[1].id) != refusal.command_id:
        return state  # another request's refusal
    return changed(state, pending=state.pending.delete(refusal.about))


def _without(mapping: Map[K, V], key: K) -> Map[K, V]:
    return mapping.delete(key) if key in mapping else mapping
