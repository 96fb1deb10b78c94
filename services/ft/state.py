"""The FT service's fold, pure: the VMs and hosts it may protect, and where each pair
stands.

A pair begins with its ProtectionRequested. The hosts' answers (the backup created, the
primary stunned, its pages exported and imported, each run of the primary and each
replay on the backup) and the service's own events (the backup loaded, each sync point)
move it on; ``steps.py`` decides its next step from where it stands. A restarted service
folds the same log and goes on from there.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Message
from schemas.ft import (
    BackupLoaded,
    FailoverRequested,
    FtMode,
    OutputsReleased,
    PairDiverged,
    PairResynced,
    PairSynced,
    ProtectionEnded,
    ProtectionRequested,
    UnprotectRequested,
    VmFailedOver,
)
from schemas.ha import HostFailed, VmRestarted
from schemas.host import HostCrashed, HostRecovered, HostRegistered
from schemas.memory import (
    ExportPages,
    ImportPages,
    PagesExported,
    PagesImported,
    RunVm,
    Selection,
    VmRan,
)
from schemas.scheduling import PlaceVm
from schemas.service import CommandRejected, CommandsIssued, RejectionCode
from schemas.transfers import MigrationCompleted
from schemas.vm import (
    MemoryMode,
    StunVm,
    UnstunVm,
    VmCreated,
    VmDestroyed,
    VmPoweredOff,
    VmPoweredOn,
    VmResumed,
    VmStunned,
    VmSuspended,
)
from shared.effects import issued, named

# Pairs that ended, kept for the status (the oldest go first).
ENDED_KEPT = 200


class Phase(enum.StrEnum):
    PLACING = "placing"  # the backup is asked of the VM's scheduler
    COPYING = "copying"  # the primary is suspended while its state is exported
    LOADING = "loading"  # the primary runs on, its log buffered, while the backup imports
    PROTECTED = "protected"  # the backup replays the log
    FAILING_OVER = "failing-over"  # the primary's host is gone: the backup replays the rest
    TAKING_OVER = "taking-over"  # the VM's reservation moves, and the backup becomes it
    TAKEN_OVER = "taken-over"  # the backup is the VM: protection starts again
    RESYNCING = "resyncing"  # the backup diverged: the primary is paused while it is copied
    ENDED = "ended"


# Phases in which a state copy is under way.
COPYING = (Phase.COPYING, Phase.RESYNCING)
# The steps of a state copy, asked for again by each resynchronisation.
COPY_STEPS = frozenset({"stun", "export", "import", "unstun"})

# Phases before the state copy suspends the primary: it runs unprotected, its outputs
# released as it sends them.
EXPOSED = (Phase.PLACING, Phase.COPYING)


@dataclass(frozen=True, slots=True)
class Known:
    """A VM as the FT service needs to know it."""

    created: VmCreated
    host: str
    on: bool

    @property
    def name(self) -> str:
        return self.created.vm


@dataclass(frozen=True, slots=True)
class Entry:
    """One run of the primary, as logged: the backup replays it."""

    index: int
    ran: VmRan
    # When the run was logged (emulated): its outputs are held from then on.
    at: float


@dataclass(frozen=True, slots=True)
class Saving:
    """Checkpoint mode: an epoch the backup is importing, as the primary's host sent it."""

    end: int  # the log entry it ends with
    flow: str
    sent_ahead: PagesExported
    exported: PagesExported
    stun_checksum: str | None


@dataclass(frozen=True, slots=True)
class Pair:
    requested: ProtectionRequested
    # The envelope that moved it last: the cause of its next step.
    last: Envelope[Message]
    phase: Phase = Phase.PLACING
    # The steps of setting it up that were asked for (their commands are on record).
    asked: frozenset[str] = frozenset()
    backup_host: str | None = None
    # State copies begun (the first sets the backup up, each later one resynchronises it).
    copies: int = 0
    # Of the oldest logged run's outputs, those released when the backup diverged in it.
    released_prefix: int = 0
    stunned: bool = False
    exported: PagesExported | None = None
    imported: PagesImported | None = None
    # Checkpoint mode: the log entry the epoch being closed ends with, once its stun is
    # asked (the primary's runs after it are the next epoch's); its pages sent while the
    # primary ran, and its memory at the stun; the epoch the backup imports; the pages
    # the backup named as candidates for diffs.
    closing: int | None = None
    sent_ahead: PagesExported | None = None
    stun_checksum: str | None = None
    saving: Saving | None = None
    candidates: tuple[int, ...] = ()
    # Runs of the primary asked for; the one in flight; the backup's replay in flight.
    runs: int = 0
    running: str | None = None
    replaying: str | None = None
    # Logged runs the backup has not caught up with yet, oldest first, and the backup's
    # replay of the oldest once it has run (its sync point is then due).
    log: tuple[Entry, ...] = ()
    replayed: VmRan | None = None
    # When the primary's next run may start (emulated): each run stands for an epoch.
    next_run_at: float = 0.0
    synced: int = 0
    released: int = 0
    bytes: int = 0
    divergences: int = 0
    # The primary's host was lost at this emulated time, and where the backup took over.
    lost_at: float | None = None
    taken_over: VmFailedOver | None = None
    # The backup's host was lost: protection starts again with a new backup.
    backup_lost: bool = False
    # Protection is to end: the UnprotectRequested that said so (the end's cause).
    unprotecting: Envelope[Message] | None = None
    failure: str | None = None
    ended: ProtectionEnded | None = None

    @property
    def vm(self) -> str:
        return self.requested.vm

    @property
    def backup(self) -> str:
        return self.requested.backup

    @property
    def primary_host(self) -> str:
        return self.requested.primary_host

    @property
    def mode(self) -> FtMode:
        return self.requested.mode

    @property
    def epoch_s(self) -> float:
        return self.requested.epoch_ms / 1000

    @property
    def copy_flow(self) -> str:
        """The data flow the primary's state crosses on, this copy."""
        return named("ft-copy", self.vm, self.backup, self.copies)

    def epoch_flow(self, entry: int) -> str:
        """Checkpoint mode: the data flow of the epoch that ends with log entry ``entry``."""
        return named("ft-epoch", self.vm, self.backup, self.copies, entry)

    def ahead_flow(self, entry: int) -> str:
        """Checkpoint mode: the data flow of what that epoch sends while the primary runs."""
        return named("ft-ahead", self.vm, self.backup, self.copies, entry)

    @property
    def epoch_end(self) -> int | None:
        """Checkpoint mode: the log entry the epoch being closed, or the next one to be,
        ends with (None: no run logged since the last)."""
        if self.closing is not None:
            return self.closing
        saved = -1 if self.saving is None else self.saving.end
        return self.log[-1].index if self.log and self.log[-1].index > saved else None

    def epoch(self, end: int) -> tuple[Entry, ...]:
        """Checkpoint mode: the logged runs of the epoch that ends with ``end``."""
        return tuple(e for e in self.log if e.index <= end)

    @property
    def flows(self) -> tuple[str, ...]:
        """The data flows its pages cross on now: its state copy, its epochs'."""
        found = [self.copy_flow]
        if self.phase in COPYING:
            # An epoch closed before a resynchronisation is not imported: its pages are
            # in the copy.
            return tuple(found)
        if (end := self.epoch_end) is not None:
            found += [self.epoch_flow(end), self.ahead_flow(end)]
        if self.saving is not None:
            found.append(self.saving.flow)
        return tuple(found)

    def run_tag(self, index: int) -> str:
        return named("ft-run", self.vm, self.backup, index)

    def replay_tag(self, index: int) -> str:
        return named("ft-replay", self.vm, self.backup, index)

    @property
    def held(self) -> int:
        return sum(len(e.ran.outputs) for e in self.log)


@dataclass(frozen=True, slots=True)
class Ft:
    vms: Mapping[str, Known] = field(default_factory=dict)
    hosts: Mapping[str, bool] = field(default_factory=dict)  # name -> up
    pairs: Mapping[str, Pair] = field(default_factory=dict)
    ended: tuple[Pair, ...] = ()
    # Protections ever asked, by VM: they number its backups.
    generations: Mapping[str, int] = field(default_factory=dict)
    # Which pair each of the service's commands serves: its VM and backup (a pair that
    # ended is not answered for by the next one of its VM).
    commands: Mapping[uuid.UUID, tuple[str, str]] = field(default_factory=dict)
    # Failovers each VM has been through.
    failovers: Mapping[str, int] = field(default_factory=dict)

    def pair_of(self, vm: str) -> Pair | None:
        """The pair ``vm`` is the primary or the backup of."""
        if vm in self.pairs:
            return self.pairs[vm]
        return next((p for p in self.pairs.values() if p.backup == vm), None)


def evolve(state: Ft, env: Envelope[Message]) -> Ft:  # noqa: PLR0911, PLR0912, PLR0915 - a case an event
    event = env.data
    match event:
        case HostRegistered() | HostRecovered():
            return replace(state, hosts={**state.hosts, event.host: True})
        case HostCrashed():
            state = replace(state, hosts={**state.hosts, event.host: False})
            for name in event.vms_lost:
                state = _vm(state, name, on=False)
            return _host_lost(state, event.host, env)
        case HostFailed():
            return _host_lost(state, event.host, env)
        case FailoverRequested() if (p := state.pairs.get(event.vm)) is not None:
            # Checkpoint mode: runs after the last epoch are lost with the host, unsaid.
            log = () if event.discarded else p.log
            return _with(state, replace(p, phase=Phase.TAKING_OVER, log=log, last=env))
        case VmFailedOver() if (p := state.pairs.get(event.vm)) is not None:
            state = _vm(state, event.vm, host=event.host, on=True)
            vms = {k: v for k, v in state.vms.items() if k != event.backup}
            failovers = {**state.failovers, event.vm: state.failovers.get(event.vm, 0) + 1}
            state = replace(state, vms=vms, failovers=failovers)
            return _with(state, replace(p, phase=Phase.TAKEN_OVER, taken_over=event, last=env))
        case OutputsReleased() if (p := state.pairs.get(event.vm)) is not None and p.log:
            return _with(
                state, replace(p, log=p.log[1:], released=p.released + len(event.released))
            )
        case VmCreated():
            known = Known(event, event.host, event.powered_on)
            state = replace(state, vms={**state.vms, event.vm: known})
            p = state.pairs.get(event.backup_of or "")
            if p is None or p.backup != event.vm:
                return state
            return _with(state, replace(p, backup_host=event.host, phase=Phase.COPYING, last=env))
        case VmDestroyed():
            return replace(state, vms={k: v for k, v in state.vms.items() if k != event.vm})
        case VmPoweredOn() | VmResumed():
            return _vm(state, event.vm, on=True)
        case VmPoweredOff() | VmSuspended():
            return _vm(state, event.vm, on=False)
        case MigrationCompleted():
            return _vm(state, event.vm, host=event.target)
        case VmRestarted():
            return _vm(state, event.vm, host=event.host, on=True)
        case ProtectionRequested():
            generations = {**state.generations, event.vm: state.generations.get(event.vm, 0) + 1}
            pair = Pair(event, env, backup_host=None)
            return replace(state, pairs={**state.pairs, event.vm: pair}, generations=generations)
        case UnprotectRequested() if (p := state.pairs.get(event.vm)) and p.backup == event.backup:
            return _with(state, replace(p, unprotecting=env, last=env))
        case ProtectionEnded() if event.vm in state.pairs:
            p = replace(state.pairs[event.vm], phase=Phase.ENDED, ended=event, last=env)
            pairs = {k: v for k, v in state.pairs.items() if k != event.vm}
            return replace(state, pairs=pairs, ended=(*state.ended, p)[-ENDED_KEPT:])
        case CommandsIssued():
            return _issued(state, event, env.sim_time)
        case VmStunned() if (p := state.pairs.get(event.vm)) and _copying(p):
            return _with(state, replace(p, stunned=True, stun_checksum=event.checksum, last=env))
        case PagesExported(selection=Selection.SETTLED) if (
            p := state.pairs.get(event.vm)
        ) and event.flow in p.flows:
            return _with(state, replace(p, sent_ahead=event, last=env))
        case PagesExported() if (p := state.pairs.get(event.vm)) and event.flow in p.flows:
            return _with(state, replace(p, exported=event, last=env))
        case PagesImported() if (p := state.pair_of(event.vm)) and event.flow in p.flows:
            return _with(state, _imported(p, event, env))
        case PairDiverged() if (p := state.pairs.get(event.vm)) is not None:
            resync = replace(
                p,
                phase=Phase.RESYNCING,
                asked=p.asked - COPY_STEPS,
                stunned=False,
                exported=None,
                imported=None,
                sent_ahead=None,
                stun_checksum=None,
                saving=None,
                candidates=(),
                closing=None,
                copies=p.copies + 1,
                replayed=None,
                replaying=None,
                released_prefix=len(event.released),
                released=p.released + len(event.released),
                divergences=p.divergences + 1,
                last=env,
            )
            return _with(state, resync)
        case PairResynced() if (p := state.pairs.get(event.vm)) is not None:
            back = replace(
                p,
                phase=Phase.PROTECTED,
                log=(),
                released_prefix=0,
                released=p.released + len(event.released),
                bytes=p.bytes + event.bytes,
                last=env,
            )
            return _with(state, back)
        case BackupLoaded() if (p := state.pairs.get(event.vm)) is not None:
            return _with(state, replace(p, phase=Phase.PROTECTED, bytes=p.bytes + event.bytes))
        case VmRan() if (p := state.pair_of(event.vm)) is not None:
            return _ran(state, p, event, env)
        case PairSynced() if (p := state.pairs.get(event.vm)) and p.mode is FtMode.CHECKPOINT:
            # The epoch's every run is acknowledged; the next may be imported.
            acked = replace(
                p,
                log=tuple(e for e in p.log if e.index > event.entry),
                saving=None,
                imported=None,
                synced=p.synced + 1,
                released=p.released + len(event.released),
                bytes=p.bytes + event.bytes,
                last=env,
            )
            return _with(state, acked)
        case PairSynced() if (p := state.pairs.get(event.vm)) is not None and p.log:
            return _with(
                state,
                replace(
                    p,
                    log=p.log[1:],
                    replayed=None,
                    synced=p.synced + 1,
                    released=p.released + len(event.released),
                    divergences=p.divergences + (not event.equal),
                    bytes=p.bytes + sum(len(i.data) for i in p.log[0].ran.inputs),
                    last=env,
                ),
            )
        case CommandRejected() if (p := _backup_refused(state, event)) is not None:
            why = f"no backup: {event.reason}"
            return _with(state, replace(p, failure=why, last=env))
        case CommandRejected() if event.command_id in state.commands:
            vm, backup = state.commands[event.command_id]
            p = state.pairs.get(vm)
            if p is None or p.backup != backup:
                # A command of a pair that ended: the pair after it has nothing to do with it.
                return state
            if event.code == RejectionCode.HOST_DOWN and _knows_loss(p):
                # A host it knows is lost refused: the pair is already going on without it.
                return state
            why = f"{event.command_type} was refused: {event.reason}"
            return _with(state, replace(p, failure=why, last=env))
    return state


def _host_lost(state: Ft, host: str, env: Envelope[Message]) -> Ft:
    """A pair whose primary's host is lost fails over once its backup holds the state;
    before that, it cannot (the VM is lost with its host, as an unprotected one). A pair
    whose backup's host is lost starts again with a new backup."""
    for p in list(state.pairs.values()):
        if p.lost_at is not None or p.backup_lost:
            continue
        if p.primary_host == host and p.phase is Phase.PROTECTED:
            lost = replace(p, phase=Phase.FAILING_OVER, lost_at=env.sim_time, running=None)
            state = _with(state, replace(lost, last=env))
        elif p.primary_host == host:
            why = f"the primary's host {host} was lost before its backup held its state"
            state = _with(state, replace(p, failure=why, last=env))
        elif host in (p.backup_host, p.requested.backup_host):
            state = _with(state, replace(p, backup_lost=True, last=env))
    return state


def _imported(p: Pair, event: PagesImported, env: Envelope[Message]) -> Pair:
    """The backup wrote an import (and named the pages that are candidates for diffs)."""
    return replace(p, imported=event, candidates=tuple(event.candidates), last=env)


def _copying(p: Pair) -> bool:
    """A state copy, or a checkpoint mode's epoch, has the primary stunned now."""
    return p.phase in COPYING or (p.mode is FtMode.CHECKPOINT and p.phase is Phase.PROTECTED)


def _knows_loss(p: Pair) -> bool:
    return p.lost_at is not None or p.backup_lost


def _ran(state: Ft, p: Pair, event: VmRan, env: Envelope[Message]) -> Ft:
    if event.vm == p.vm and event.tag == p.running:
        entry = Entry(p.runs - 1, event, env.sim_time)
        return _with(state, replace(p, log=(*p.log, entry), running=None, last=env))
    if event.vm == p.backup and event.tag == p.replaying:
        return _with(state, replace(p, replayed=event, replaying=None, last=env))
    return state


def _issued(state: Ft, record: CommandsIssued, at: float) -> Ft:
    """Which pair each command serves, and which step of it was asked for."""
    found: dict[uuid.UUID, tuple[str, str]] = {}
    for command in issued(record):
        cmd = command.data
        vm = getattr(cmd, "vm", None)
        p = state.pair_of(vm) if isinstance(vm, str) else None
        if p is None:
            continue
        found[command.id] = (p.vm, p.backup)
        if (step := _epoch_issued(p, cmd)) is not None:
            state = _with(state, step)
            continue
        match cmd:
            case PlaceVm():
                p = replace(p, asked=p.asked | {"place"})
            case StunVm():
                p = replace(p, asked=p.asked | {"stun"})
            case ExportPages():
                p = replace(p, asked=p.asked | {"export"})
            case ImportPages():
                loading = Phase.LOADING if p.phase is Phase.COPYING else p.phase
                p = replace(p, asked=p.asked | {"import"}, phase=loading)
            case UnstunVm():
                p = replace(p, asked=p.asked | {"unstun"})
            case RunVm() if cmd.vm == p.vm:
                start = max(at, p.next_run_at)
                p = replace(p, running=cmd.tag, runs=p.runs + 1, next_run_at=start + p.epoch_s)
            case RunVm():
                p = replace(p, replaying=cmd.tag)
        state = _with(state, p)
    return replace(state, commands={**state.commands, **found}) if found else state


def _epoch_issued(p: Pair, cmd: Message) -> Pair | None:
    """Checkpoint mode: the pair once an epoch's own step is asked (None: not one). The
    import of the epoch being closed makes it the one being saved."""
    end = p.epoch_end
    if p.mode is not FtMode.CHECKPOINT or p.phase in COPYING:
        return None
    match cmd:
        case ImportPages() if end is not None and cmd.flow == p.epoch_flow(end):
            return _saving(replace(p, asked=p.asked | {f"import:{end}"}), end)
        case StunVm() if end is not None:
            return replace(p, asked=p.asked | {f"stun:{end}"}, closing=end)
        case ExportPages() if end is not None:
            return replace(p, asked=p.asked | {f"{_epoch_step(cmd)}:{end}"})
        case UnstunVm() if p.phase is Phase.PROTECTED:
            return p
    return None


def _saving(p: Pair, end: int) -> Pair:
    assert p.sent_ahead is not None
    assert p.exported is not None
    saving = Saving(end, p.epoch_flow(end), p.sent_ahead, p.exported, p.stun_checksum)
    return replace(
        p,
        saving=saving,
        closing=None,
        sent_ahead=None,
        exported=None,
        stunned=False,
        stun_checksum=None,
    )


def _epoch_step(cmd: StunVm | ExportPages | ImportPages) -> str:
    match cmd:
        case StunVm():
            return "stun"
        case ExportPages(selection=Selection.SETTLED):
            return "ahead"
        case ExportPages():
            return "export"
    return "import"


def _backup_refused(state: Ft, event: CommandRejected) -> Pair | None:
    """The pair whose backup its scheduler could not place (refused in its round)."""
    if event.command_type not in ("PlaceVm", "CreateVm") or not event.about.startswith("vm/"):
        return None
    name = event.about.removeprefix("vm/")
    return next(
        (p for p in state.pairs.values() if p.backup == name and p.phase is Phase.PLACING), None
    )


def _with(state: Ft, p: Pair) -> Ft:
    return replace(state, pairs={**state.pairs, p.vm: p})


def _vm(state: Ft, name: str, **changes: object) -> Ft:
    known = state.vms.get(name)
    if known is None:
        return state
    return replace(state, vms={**state.vms, name: replace(known, **changes)})  # type: ignore[arg-type]


def recordable(known: Known) -> bool:
    return known.created.memory_mode == MemoryMode.FULL and known.created.inputs is not None
