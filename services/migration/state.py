"""The coordinator's fold, pure: each migration it knows, where it stands, and the facts
the hosts have reported for its current round.

A migration is taken on when its source host starts it (MigrationStarted). From then on
the coordinator's own events (rounds sent and done, throttle steps, switchover, the end)
say what it decided, and the hosts' answers (pages exported and imported, the guest's
runs, the stun, a refusal, a crash) say what happened; the next step is decided from
both (``steps.py``). A restarted coordinator folds the same log and goes on from there.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Message
from schemas.ha import VmRestarted
from schemas.host import HostCrashed
from schemas.memory import ExportPages, PagesExported, PagesImported, RunSteps, VmRan
from schemas.migration import (
    MigrationRoundDone,
    MigrationRoundSent,
    MigrationSwitchingOver,
    MigrationThrottleRaised,
    RoundFigures,
)
from schemas.service import CommandRejected, CommandsIssued
from schemas.transfers import (
    MigrationAborted,
    MigrationCompleted,
    MigrationStarted,
    MigrationSwitchedOver,
)
from schemas.vm import VmStunned
from services.migration.convergence import (
    DEVICE_STATE_BYTES,
    Limits,
    Progress,
    RoundSent,
    Throttle,
    throttled,
)
from shared.effects import issued, named

# Migrations that ended, kept for the listing (the oldest go first).
ENDED_KEPT = 1_000


class Stage(enum.StrEnum):
    STARTING = "starting"  # taken on: the first round is to be asked for
    EXPORTING = "exporting"  # the source is asked for the round's pages
    TRANSFERRING = "transferring"  # the target imports them (and the guest runs on)
    VERIFYING = "verifying"  # post-copy: the source replays the target's runs
    ENDED = "ended"


def flow_of(migration: str, round_: int) -> str:
    """The data flow a round's pages travel on: fixed by the migration and the round."""
    return named("flow", migration, round_)


def run_tag(migration: str, round_: int) -> str:
    return named("run", migration, round_)


def verify_flow(migration: str) -> str:
    """The (empty) flow whose export reports the source's checksum after the replay."""
    return named("verify", migration)


@dataclass(frozen=True, slots=True)
class Flight:
    """One migration, from its start to its end."""

    started: MigrationStarted
    # The envelope that moved it last: the cause of its next step.
    last: Envelope[Message]
    started_sim: float
    stage: Stage = Stage.STARTING
    round: int = 0
    # The current round is the stop-and-copy: the guest is stunned for it.
    final: bool = False
    progress: Progress = field(default_factory=Progress)
    done: tuple[RoundFigures, ...] = ()
    # The current round's pages on their flow, and when it ends (emulated).
    sent: RoundFigures | None = None
    ends_at: float = 0.0
    exported: PagesExported | None = None
    imported: PagesImported | None = None
    ran: VmRan | None = None
    stunned: bool = False
    checksum_at_stun: str | None = None
    # After a post-copy switchover: the VM runs on the target; its runs there (which the
    # source replays at the end), the remote faults they took and when the last was.
    switched: bool = False
    switched_at: float | None = None
    runs: tuple[RunSteps, ...] = ()
    faults: int = 0
    # The remote faults of each round done since the switchover.
    faults_by_round: tuple[int, ...] = ()
    target_checksum: str | None = None
    verified: PagesExported | None = None
    # Why it must end now without moving the VM, and whether the VM is lost with it.
    failure: str | None = None
    vm_lost: bool = False
    ended: MigrationCompleted | MigrationAborted | None = None

    @property
    def id(self) -> str:
        return self.started.migration

    @property
    def full(self) -> bool:
        return self.started.memory_mode.value == "full"

    @property
    def limits(self) -> Limits:
        return Limits(
            bytes_per_s=self.started.rate_mbps * 1e6 / 8,
            downtime_s=self.started.downtime_ms / 1000,
            device_bytes=DEVICE_STATE_BYTES,
        )

    @property
    def flow(self) -> str:
        return flow_of(self.id, self.round)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.done)


@dataclass(frozen=True, slots=True)
class Coordinator:
    flights: Mapping[str, Flight] = field(default_factory=dict)
    # The migration in flight of each VM (a VM moves one migration at a time).
    moving: Mapping[str, str] = field(default_factory=dict)
    # The coordinator's commands by id, with the migration each serves: a host refuses a
    # command by its id.
    commands: Mapping[uuid.UUID, str] = field(default_factory=dict)

    def in_flight(self) -> list[Flight]:
        return [f for f in self.flights.values() if f.stage != Stage.ENDED]


def evolve(state: Coordinator, env: Envelope[Message]) -> Coordinator:  # noqa: PLR0911, PLR0912
    event = env.data
    match event:
        case MigrationStarted() if event.migration not in state.flights:
            # One that does not run moves in one round, its last.
            flight = Flight(
                started=event, last=env, started_sim=env.sim_time, final=not event.running
            )
            return replace(
                state,
                flights={**state.flights, event.migration: flight},
                moving={**state.moving, event.vm: event.migration},
            )
        case CommandsIssued():
            return _issued(state, event)
        case MigrationRoundSent() if (f := _flight(state, event.migration)) is not None:
            return _with(
                state,
                replace(
                    f,
                    stage=Stage.TRANSFERRING,
                    sent=event.figures,
                    ends_at=event.ends_at,
                    last=env,
                ),
            )
        case MigrationRoundDone() if (f := _flight(state, event.migration)) is not None:
            progress = f.progress
            if event.figures.live and not f.switched:
                sent = RoundSent(event.figures.pages, event.figures.bytes, event.dirty_pages_left)
                progress = progress.after(sent, f.limits)
            return _with(
                state,
                replace(
                    f,
                    stage=Stage.VERIFYING if event.pages_left == 0 else Stage.EXPORTING,
                    target_checksum=event.target_checksum or f.target_checksum,
                    faults_by_round=(
                        (*f.faults_by_round, event.remote_faults)
                        if f.switched
                        else f.faults_by_round
                    ),
                    round=f.round + 1,
                    done=(*f.done, event.figures),
                    progress=progress,
                    sent=None,
                    exported=None,
                    imported=None,
                    ran=None,
                    last=env,
                ),
            )
        case MigrationThrottleRaised() if (f := _flight(state, event.migration)) is not None:
            return _with(
                state, replace(f, progress=throttled(f.progress, Throttle(event.throttle)))
            )
        case MigrationSwitchingOver() if (f := _flight(state, event.migration)) is not None:
            return _with(state, replace(f, final=True))
        case MigrationSwitchedOver() if (f := _flight(state, event.migration)) is not None:
            return _with(
                state,
                replace(
                    f,
                    switched=True,
                    final=False,
                    stage=Stage.EXPORTING,
                    switched_at=env.sim_time,
                    last=env,
                ),
            )
        case PagesExported() if (f := _of_vm(state, event.vm)) is not None and event.flow == f.flow:
            return _with(state, replace(f, exported=event, last=env))
        case PagesExported() if (f := _of_vm(state, event.vm)) is not None and event.flow == (
            verify_flow(f.id)
        ):
            return _with(state, replace(f, verified=event, last=env))
        case PagesImported() if (f := _of_vm(state, event.vm)) is not None and event.flow == f.flow:
            return _with(state, replace(f, imported=event, last=env))
        case VmRan() if (f := _of_vm(state, event.vm)) is not None and event.tag == run_tag(
            f.id, f.round
        ):
            if f.switched and event.host == f.started.target:
                f = replace(
                    f,
                    runs=(*f.runs, _steps_of(event)),
                    faults=f.faults + event.faults,
                )
            return _with(state, replace(f, ran=event, last=env))
        case VmStunned() if (f := _of_vm(state, event.vm)) is not None and f.final:
            return _with(state, replace(f, stunned=True, checksum_at_stun=event.checksum, last=env))
        case HostCrashed():
            return _crashed(state, event)
        case VmRestarted() if (f := _of_vm(state, event.vm)) is not None:
            why = f"{event.vm} was restarted on {event.host} after {event.from_host} failed"
            return _failed(state, f, why, lost=False)
        case CommandRejected() if event.command_id in state.commands:
            f = _flight(state, state.commands[event.command_id])
            if f is None:
                return state
            why = f"the hosts refused {event.command_type}: {event.reason}"
            return _failed(state, f, why, lost=False)
        case MigrationCompleted() | MigrationAborted() if event.migration in state.flights:
            return _end(state, state.flights[event.migration], event)
    return state


def _steps_of(ran: VmRan) -> RunSteps:
    return RunSteps(
        first_step=ran.first_step,
        steps=ran.steps,
        writes_per_step=ran.writes_per_step,
        reads_per_step=ran.reads_per_step,
    )


def _flight(state: Coordinator, migration: str) -> Flight | None:
    f = state.flights.get(migration)
    return f if f is not None and f.stage != Stage.ENDED else None


def _of_vm(state: Coordinator, vm: str) -> Flight | None:
    migration = state.moving.get(vm)
    return None if migration is None else _flight(state, migration)


def _with(state: Coordinator, flight: Flight) -> Coordinator:
    return replace(state, flights={**state.flights, flight.id: flight})


def _failed(state: Coordinator, f: Flight, why: str, *, lost: bool) -> Coordinator:
    """It is to end now. Its end stays in its own workflow (caused by its last step, not
    by the crash), where whoever asked for it waits."""
    if f.failure is not None:
        return state
    # After a switchover its pages are split between the two hosts: it cannot go back.
    return _with(state, replace(f, failure=why, vm_lost=lost or f.switched))


def _crashed(state: Coordinator, event: HostCrashed) -> Coordinator:
    for f in state.in_flight():
        if f.started.source == event.host:
            why = f"source host {event.host} crashed: {f.started.vm} is lost with it"
            state = _failed(state, f, why, lost=True)
        elif f.started.target == event.host and f.switched:
            why = f"target host {event.host} crashed: {f.started.vm} ran there already"
            state = _failed(state, f, why, lost=True)
        elif f.started.target == event.host:
            why = f"target host {event.host} crashed: {f.started.vm} runs on at the source"
            state = _failed(state, f, why, lost=False)
    return state


def _issued(state: Coordinator, record: CommandsIssued) -> Coordinator:
    """Which migration each of the coordinator's commands serves."""
    found: dict[uuid.UUID, str] = {}
    for command in issued(record):
        vm = getattr(command.data, "vm", None)
        f = _of_vm(state, vm) if isinstance(vm, str) else None
        if f is None:
            continue
        found[command.id] = f.id
        if f.stage == Stage.STARTING and isinstance(command.data, ExportPages):
            # The first round is asked for: its record is the mark that it was.
            state = _with(state, replace(f, stage=Stage.EXPORTING))
    return replace(state, commands={**state.commands, **found}) if found else state


def _end(
    state: Coordinator, f: Flight, event: MigrationCompleted | MigrationAborted
) -> Coordinator:
    ended = replace(f, stage=Stage.ENDED, ended=event)
    flights = {**state.flights, f.id: ended}
    done = [k for k, v in flights.items() if v.stage == Stage.ENDED]
    for k in done[: max(0, len(done) - ENDED_KEPT)]:
        del flights[k]
    return replace(
        state,
        flights=flights,
        moving={vm: m for vm, m in state.moving.items() if m != f.id},
        commands={c: m for c, m in state.commands.items() if m != f.id},
    )
