"""The coordinator's decisions, pure: for each migration in flight, the next step once
what it waits for has happened, as events to append and commands to send.

Pre-copy, for a guest with real memory:
- round 0 exports every page (``checkpoint``: the dirty bits start clear);
- once a round's pages are on their flow, the target imports them and the source runs
  the guest for the round's emulated duration (its bytes over the reserved bandwidth);
- once both are done and the stack's clock has reached the round's end, the round is
  done, with the pages the guest dirtied meanwhile: ``convergence.next_step`` says
  whether to go on, throttle the guest, switch over or give up;
- the switchover stuns the source (its checksum as it stops) and sends the last dirty
  pages with the device state; the migration completes when the target's checksum
  equals it, and is aborted when not.
A VM that does not run (off, suspended) moves cold in one round. A VM without memory
bytes (accounting only) moves in rounds that are modelled: its size, then its device
state, on the same clock.
"""

from __future__ import annotations

from schemas import Command, Event
from schemas.memory import ExportPages, ImportPages, RunVm, Selection
from schemas.migration import (
    MigrationRoundDone,
    MigrationRoundSent,
    MigrationSwitchingOver,
    MigrationThrottleRaised,
    RoundFigures,
)
from schemas.transfers import (
    MigrationAborted,
    MigrationCompleted,
    MigrationMode,
    MigrationSwitchedOver,
)
from schemas.vm import StunVm, ThrottleVm
from services.migration.convergence import (
    DEVICE_STATE_BYTES,
    GiveUp,
    NextRound,
    RoundSent,
    Switchover,
    Throttle,
    next_step,
)
from services.migration.precopy_model import PAGE_BYTES
from services.migration.state import (
    Coordinator,
    Flight,
    Stage,
    flow_of,
    run_tag,
    verify_flow,
)
from shared.outcome import Outcome

# Pages per chunk on a data flow: 512 KiB, under a NATS message's default 1 MiB.
EXPORT_BATCH = 128
# An emulated time within this of a round's end counts as reached.
EPSILON_S = 1e-9
# After a switchover the rest is pushed in rounds of this much emulated time, each
# begun with the pages the target faulted on in the one before.
POSTCOPY_ROUND_S = 0.25
# A hybrid's page map: an entry (where the page lives) per page not sent before the stop.
PAGE_MAP_BYTES = 8
# The heat a page has (accesses, decayed by half every 8 ticks) for a hybrid to send it
# before the switchover: a guest's hot set stays near 2 at the hosts' default pace, the
# rest of its memory near 0.03.
HOT_HEAT = 0.5


def steps(state: Coordinator, now: float) -> list[Outcome]:
    """The next step of every migration that can take one at emulated time ``now``."""
    return [out for f in state.in_flight() if (out := step(f, now)) is not None]


def step(f: Flight, now: float) -> Outcome | None:
    if f.failure is not None:
        return _aborted(f, f.failure)
    match f.stage:
        case Stage.STARTING:
            return _start(f)
        case Stage.EXPORTING:
            return _exported(f)
        case Stage.TRANSFERRING:
            return _transferred(f, now)
        case Stage.VERIFYING if f.verified is not None:
            return _verified(f)
    return None


def _transferred(f: Flight, now: float) -> Outcome | None:
    """Once the round is in (and the guest has run), and its emulated time has passed."""
    if now < f.ends_at - EPSILON_S or (f.full and f.imported is None):
        return None
    if f.final and _mode(f) is MigrationMode.HYBRID:
        return _switch(f)
    if f.final:
        return _arrived(f)
    if f.full and f.ran is None:
        return None
    return _postcopy_round_done(f) if f.switched else _round_done(f)


def _start(f: Flight) -> Outcome | None:
    if not f.full:
        return _sent(f, _modelled(f, pages=f.started.mem_mib * 256))
    if _mode(f) is MigrationMode.POSTCOPY:
        return _postcopy_start(f)
    first = Selection.HOT if _mode(f) is MigrationMode.HYBRID else Selection.CHECKPOINT
    export = _export(f, 0, first, checksum=not f.started.running)
    if first is Selection.HOT:
        export = export.model_copy(update={"min_heat": HOT_HEAT})
    return Outcome(commands=[export], cause=f.last, key=f"{f.id}/r0/export")


def _exported(f: Flight) -> Outcome | None:
    """The round's pages are on their flow (and, for the stop, the guest is stunned)."""
    if _stops(f) and not f.stunned:
        return None
    if not f.full:
        return _sent(f, _modelled(f, pages=0))
    if f.exported is None:
        return None
    exported = f.exported
    wire = exported.bytes + (DEVICE_STATE_BYTES if f.final else 0)
    if f.final and _mode(f) is MigrationMode.HYBRID:
        # The page map: where each page not sent yet lives (the source).
        wire += PAGE_MAP_BYTES * (exported.left or 0)
    figures = _figures(f, exported.pages, exported.zero_pages, wire, exported.mapped_pages)
    return _sent(f, figures)


def _mode(f: Flight) -> MigrationMode:
    """How it moves: a VM that does not run moves cold, in one round, whatever was asked."""
    return f.started.mode if f.started.running else MigrationMode.PRECOPY


def _postcopy_start(f: Flight) -> Outcome | None:
    """Post-copy stops the guest at once, then switches over with its device state."""
    if not f.final:
        events: list[Event] = [
            MigrationSwitchingOver(
                migration=f.id,
                vm=f.started.vm,
                after_round=0,
                dirty_pages=0,
                expected_downtime_ms=round(_device_s(f) * 1000, 3),
            )
        ]
        stun = StunVm(host=f.started.source, vm=f.started.vm)
        return Outcome(events=events, commands=[stun], cause=f.last, key=f"{f.id}/stun")
    if not f.stunned:
        return None
    return _switch(f)


def _switch(f: Flight) -> Outcome:
    """The VM runs on the target from now on; the pages it lacks follow, those it faults
    on first. A hybrid's stop round is done with it."""
    events: list[Event] = []
    next_round = f.round
    left = f.started.mem_mib * 256
    if f.sent is not None and f.exported is not None:
        left = f.exported.left or 0
        events.append(_pushed(f, f.sent, left, faults=0))
        next_round += 1
    events.append(
        MigrationSwitchedOver(
            migration=f.id,
            vm=f.started.vm,
            source=f.started.source,
            target=f.started.target,
            mode=f.started.mode,
            checksum_at_stun=f.checksum_at_stun,
            pages_left=left,
        )
    )
    export = _postcopy_export(f, next_round, demand=[])
    return Outcome(events=events, commands=[export], cause=f.last, key=f"{f.id}/switch")


def _pushed(f: Flight, figures: RoundFigures, left: int, *, faults: int) -> MigrationRoundDone:
    """A round done with the guest stopped or on the target: nothing is dirtied at the
    source any more; what counts is what is left there."""
    return MigrationRoundDone(
        migration=f.id,
        vm=f.started.vm,
        figures=figures,
        dirty_pages_left=0,
        throttle=0.0,
        target_checksum=f.imported.checksum if f.imported is not None else None,
        pages_left=left,
        remote_faults=faults,
    )


def _postcopy_export(f: Flight, round_: int, demand: list[int]) -> Command:
    budget = int(f.limits.bytes_per_s * POSTCOPY_ROUND_S / PAGE_BYTES)
    export = _export(f, round_, Selection.POSTCOPY)
    return export.model_copy(update={"demand": demand, "budget": max(1, budget)})


def _postcopy_round_done(f: Flight) -> Outcome:
    """A round crossed while the guest ran on the target: the pages it faulted on go
    first in the next; once none is left, the source replays the target's runs on what it
    sent, and reports its checksum."""
    assert f.sent is not None
    assert f.exported is not None
    assert f.ran is not None
    left = f.exported.left or 0
    done = _pushed(f, f.sent, left, faults=f.ran.faults)
    commands: list[Command]
    if left:
        commands = [_postcopy_export(f, f.round + 1, f.ran.demand)]
    else:
        source, vm = f.started.source, f.started.vm
        commands = [
            RunVm(host=source, vm=vm, seconds=0, tag=verify_flow(f.id), replay=list(f.runs)),
            ExportPages(
                host=source,
                vm=vm,
                flow=verify_flow(f.id),
                selection=Selection.ALL,
                pages=[],
                checksum=True,
            ),
        ]
    return Outcome(events=[done], commands=commands, cause=f.last, key=f"{f.id}/r{f.round}/done")


def _verified(f: Flight) -> Outcome:
    """Every page is on the target: its memory must be the source's at the stun with the
    target's runs replayed on it."""
    assert f.verified is not None
    replayed, on_target = f.verified.checksum, f.target_checksum
    if replayed != on_target:
        why = (
            f"the target's memory ({on_target}) is not the source's at the stop with the "
            f"target's runs replayed ({replayed})"
        )
        return _aborted(f, why)
    stopped = [r for r in f.done if not r.live]
    downtime = sum(r.duration_s for r in stopped) if stopped else _device_s(f)
    completed = MigrationCompleted(
        migration=f.id,
        vm=f.started.vm,
        source=f.started.source,
        target=f.started.target,
        mode=f.started.mode,
        rounds=len(f.done),
        pages=sum(r.pages for r in f.done),
        zero_pages=sum(r.zero_pages for r in f.done),
        mapped_pages=sum(r.mapped_pages for r in f.done),
        bytes=sum(r.bytes for r in f.done) + (0 if stopped else DEVICE_STATE_BYTES),
        downtime_ms=round(downtime * 1000, 3),
        total_s=round(sum(r.duration_s for r in f.done) + (0 if stopped else downtime), 6),
        max_throttle=f.progress.throttle,
        remote_faults=f.faults,
        full_speed_s=round(_until_full_speed(f), 6),
        checksum_at_stun=f.checksum_at_stun,
        checksum_on_target=on_target,
        checksum_replayed=replayed,
        checksums_equal=True,
    )
    return Outcome(events=[completed], cause=f.last, key=f"{f.id}/end")


def _until_full_speed(f: Flight) -> float:
    """From the switchover to the end of the last round in which the guest faulted."""
    after = f.done[len(f.done) - len(f.faults_by_round) :]
    last = max((i for i, n in enumerate(f.faults_by_round) if n), default=-1)
    return sum(r.duration_s for r in after[: last + 1])


def _resend_budget(f: Flight) -> int:
    """The pages a hybrid's stop may send again within the downtime limit, beside the
    device state and the page map (at most an entry per page); the rest of those written
    since they were sent follow the switchover."""
    room = f.limits.downtime_s * f.limits.bytes_per_s - DEVICE_STATE_BYTES
    room -= PAGE_MAP_BYTES * f.started.mem_mib * 256
    return max(0, int(room // PAGE_BYTES))


def _device_s(f: Flight) -> float:
    return DEVICE_STATE_BYTES / f.limits.bytes_per_s


def _stops(f: Flight) -> bool:
    """The current round is sent with the guest stunned."""
    return f.final and f.started.running


def _export(f: Flight, round_: int, selection: Selection, *, checksum: bool = False) -> Command:
    return ExportPages(
        host=f.started.source,
        vm=f.started.vm,
        flow=flow_of(f.id, round_),
        selection=selection,
        batch=EXPORT_BATCH,
        checksum=checksum,
        mapped=True,
    )


def _figures(f: Flight, pages: int, zero: int, wire: int, mapped: int = 0) -> RoundFigures:
    return RoundFigures(
        round=f.round,
        live=not f.final,
        pages=pages,
        zero_pages=zero,
        mapped_pages=mapped,
        bytes=wire,
        duration_s=round(wire / f.limits.bytes_per_s, 9),
    )


def _modelled(f: Flight, *, pages: int) -> RoundFigures:
    """A round of a VM without bytes: all of its pages at first, then the device state."""
    device = DEVICE_STATE_BYTES if f.final else 0
    return _figures(f, pages, 0, pages * PAGE_BYTES + device)


def _sent(f: Flight, figures: RoundFigures) -> Outcome:
    """The round's pages are on the flow: the target imports them, the guest runs on."""
    # It starts when the one before it ended, or when its pages were exported if later:
    # the log alone fixes when it ends, whenever (and however often) this is decided.
    begins = max(f.ends_at, f.last.sim_time, f.started_sim)
    sent = MigrationRoundSent(
        migration=f.id,
        vm=f.started.vm,
        figures=figures,
        ends_at=round(begins + figures.duration_s, 9),
    )
    commands: list[Command] = []
    if f.full and f.exported is not None:
        commands.append(
            ImportPages(
                host=f.started.target,
                vm=f.started.vm,
                flow=f.flow,
                batches=f.exported.batches,
            )
        )
        if figures.live:
            # The guest runs while the round crosses: on the source before a switchover;
            # after it on the target, before the round's pages are in (it faults on those).
            run = RunVm(
                host=f.started.target if f.switched else f.started.source,
                vm=f.started.vm,
                seconds=figures.duration_s,
                tag=run_tag(f.id, f.round),
            )
            commands.insert(0, run) if f.switched else commands.append(run)
    return Outcome(events=[sent], commands=commands, cause=f.last, key=f"{f.id}/r{f.round}/sent")


def _round_done(f: Flight) -> Outcome:
    """A live round arrived: go on, throttle, switch over or give up."""
    assert f.sent is not None
    dirtied = f.ran.dirty_pages if f.ran is not None else 0
    progress = f.progress.after(RoundSent(f.sent.pages, f.sent.bytes, dirtied), f.limits)
    done = MigrationRoundDone(
        migration=f.id,
        vm=f.started.vm,
        figures=f.sent,
        dirty_pages_left=dirtied,
        throttle=f.progress.throttle,
        target_checksum=f.imported.checksum if f.imported is not None else None,
    )
    events: list[Event] = [done]
    commands: list[Command] = []
    source, vm, after = f.started.source, f.started.vm, f.round
    decided = next_step(progress, f.limits)
    if _mode(f) is MigrationMode.HYBRID:
        # Hybrid sends its hot pages once, then stops to resend those written meanwhile.
        decided = Switchover(progress.expected_downtime_s(f.limits))
    match decided:
        case Switchover(expected_downtime_s=expected):
            events.append(
                MigrationSwitchingOver(
                    migration=f.id,
                    vm=vm,
                    after_round=after,
                    dirty_pages=dirtied,
                    expected_downtime_ms=round(expected * 1000, 3),
                )
            )
            commands.append(StunVm(host=source, vm=vm))
            if _mode(f) is MigrationMode.HYBRID:
                resend = _export(f, after + 1, Selection.RESEND)
                commands.append(resend.model_copy(update={"budget": _resend_budget(f)}))
                return Outcome(
                    events=events, commands=commands, cause=f.last, key=f"{f.id}/r{after}/done"
                )
        case Throttle() as throttle:
            events.append(
                MigrationThrottleRaised(
                    migration=f.id, vm=vm, throttle=throttle.throttle, after_round=after
                )
            )
            commands.append(ThrottleVm(host=source, vm=vm, cpu_cap=throttle.cpu_cap))
        case GiveUp(reason=reason):
            events.append(_abort_event(f, reason, rounds=len(f.done) + 1))
            return Outcome(events=events, cause=f.last, key=f"{f.id}/r{after}/done")
        case NextRound():
            pass
    if f.full:
        commands.append(_export(f, after + 1, Selection.DIRTY))
    return Outcome(events=events, commands=commands, cause=f.last, key=f"{f.id}/r{after}/done")


def _arrived(f: Flight) -> Outcome:
    """The last round arrived: the target's memory must be the source's at the stop."""
    assert f.sent is not None
    rounds = (*f.done, f.sent)
    at_stop = f.checksum_at_stun if f.started.running else _cold_checksum(f)
    on_target = f.imported.checksum if f.imported is not None else None
    if f.full and at_stop != on_target:
        why = (
            f"the target's memory ({on_target}) is not the source's as it stopped "
            f"({at_stop}): {f.started.vm} runs on at the source"
        )
        return _aborted(f, why)
    completed = MigrationCompleted(
        migration=f.id,
        vm=f.started.vm,
        source=f.started.source,
        target=f.started.target,
        mode=f.started.mode,
        rounds=len(rounds),
        pages=sum(r.pages for r in rounds),
        zero_pages=sum(r.zero_pages for r in rounds),
        mapped_pages=sum(r.mapped_pages for r in rounds),
        bytes=sum(r.bytes for r in rounds),
        downtime_ms=round(f.sent.duration_s * 1000, 3) if f.started.running else 0.0,
        total_s=round(sum(r.duration_s for r in rounds), 6),
        max_throttle=f.progress.throttle,
        checksum_at_stun=at_stop,
        checksum_on_target=on_target,
        checksums_equal=(at_stop == on_target) if f.full else None,
    )
    return Outcome(events=[completed], cause=f.last, key=f"{f.id}/end")


def _cold_checksum(f: Flight) -> str | None:
    """A VM that does not run moves in one round, as its export found it."""
    return f.exported.checksum if f.exported is not None else None


def _abort_event(f: Flight, reason: str, *, rounds: int | None = None) -> MigrationAborted:
    return MigrationAborted(
        migration=f.id,
        vm=f.started.vm,
        source=f.started.source,
        target=f.started.target,
        reason=reason,
        rounds=len(f.done) if rounds is None else rounds,
        bytes=f.bytes,
        vm_lost=f.vm_lost,
    )


def _aborted(f: Flight, reason: str) -> Outcome:
    return Outcome(events=[_abort_event(f, reason)], cause=f.last, key=f"{f.id}/abort")
