"""The FT service's decisions, pure: for each pair, its next steps once what they wait
for has happened, as events to append and commands to send.

Record/replay, initialised by a state copy:
- the backup, an empty shell of the primary's size, is placed by the primary's scheduler
  (never on the primary's host);
- the primary is suspended (stunned), its memory, device region included, exported
  with its checksum; then it resumes, and the backup imports the copy;
- from the resume on, the primary runs an epoch at a time, each run's inputs drawn by its
  host and logged with the run (VmRan); while the backup imports, they are buffered;
- once the backup's memory is the primary's (equal checksums: BackupLoaded), it replays
  the logged runs in order; after each, a sync point (PairSynced) compares the two
  memories where the run started and releases the outputs of the run, which were held
  until then: an output leaves only once the backup has every log entry before it.
"""

from __future__ import annotations

from dataclasses import replace

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
)
from schemas.memory import ExportPages, ImportPages, LoggedRun, RunVm, Selection, VmRan
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.vm import DestroyVm, StunVm, UnstunVm
from services.ft.ending import ending, held_outputs
from services.ft.epochs import acknowledged, epoch_steps
from services.ft.protect import backup_name
from services.ft.state import Entry, Ft, Pair, Phase
from shared.outcome import Outcome

# Logged runs the backup may be behind its primary (record/replay and lockstep).
MAX_LAG = 2
# Pages per chunk of the state copy: 512 KiB, under a NATS message's default 1 MiB.
COPY_BATCH = 128


def steps(state: Ft, now: float) -> list[Outcome]:
    """The next steps of every pair that can take one at emulated time ``now``, and the
    backups of pairs that ended, destroyed."""
    return [
        *(out for p in state.pairs.values() for out in pair_steps(state, p, now)),
        *(_drop_backup(state, p) for p in state.ended if p.backup in state.vms),
    ]


def pair_steps(state: Ft, p: Pair, now: float) -> list[Outcome]:  # noqa: PLR0911 - one case a phase
    if p.failure is not None:
        return [_end(p, p.failure)]
    if p.backup_lost or p.unprotecting is not None:
        return _ending(state, p)
    match p.phase:
        case Phase.PLACING:
            place = [] if "place" in p.asked else [_place(state, p)]
            return [*place, *_exposed(p, now)]
        case Phase.COPYING:
            # The stun goes alone: no run is asked for after it.
            return _copy(p) or _exposed(p, now)
        case Phase.LOADING:
            return [*_loaded(p), *_run_primary(p, now)]
        case Phase.PROTECTED if p.mode is FtMode.CHECKPOINT:
            # Epochs run, are closed and saved; the primary runs one ahead of the epoch
            # being saved, its outputs held with it.
            return epoch_steps(p, now, _primary_run(p, now))
        case Phase.PROTECTED:
            # The primary runs ahead of its backup by a bounded log: its held outputs and
            # a failover's replay stay short.
            ahead = _run_primary(p, now) if len(p.log) < MAX_LAG else []
            return [*ahead, *_replay(p), *_sync(p, now)]
        case Phase.FAILING_OVER if p.mode is FtMode.CHECKPOINT:
            return _last_epoch(state, p, now)
        case Phase.FAILING_OVER:
            return [*_replay(p), *_sync(p, now), *_fail_over(state, p)]
        case Phase.RESYNCING:
            return _copy(p) or _resynced(p)
        case Phase.TAKEN_OVER if p.taken_over is not None:
            host = p.taken_over.host
            return [_protect_again(state, p, f"failed over to {host}", primary_host=host)]
    return []


def _ending(state: Ft, p: Pair) -> list[Outcome]:
    """Unprotected, or its backup lost: once the primary's run in flight is logged (its
    outputs leave with the rest held), the pair ends, and in the second case begins again
    with a new backup."""
    if p.running is not None:
        return []
    if p.unprotecting is not None:
        return [_end(replace(p, last=p.unprotecting), "unprotected", release=True)]
    lost = p.backup_host or p.requested.backup_host
    return [_protect_again(state, p, f"the backup's host {lost} was lost")]


def _exposed(p: Pair, now: float) -> list[Outcome]:
    """Before its state is copied, the primary runs with nothing to wait for: each run's
    outputs leave as soon as it is logged."""
    if p.log:
        entry = p.log[0]
        released = OutputsReleased(
            vm=p.vm,
            entry=entry.index,
            first_step=entry.ran.first_step,
            steps=entry.ran.steps,
            released=entry.ran.outputs,
        )
        return [Outcome(events=[released], cause=p.last, key=f"{p.backup}/out/{entry.index}")]
    if "stun" in p.asked:
        return []
    return _run_primary(p, now)


def _last_epoch(state: Ft, p: Pair, now: float) -> list[Outcome]:
    """Checkpoint mode: an epoch whose pages the backup was importing is acknowledged
    once they are in; the runs after the last acknowledged epoch are lost with the
    primary's host, their outputs never said; then the backup takes over from there."""
    if p.saving is not None:
        acked = acknowledged(p, now)
        if acked is None:
            return []
        key = f"{p.backup}/epoch/{p.saving.end}/acked"
        return [Outcome(events=[acked], cause=p.last, key=key)]
    return _fail_over(state, p, discard=True)


def _fail_over(state: Ft, p: Pair, *, discard: bool = False) -> list[Outcome]:
    """Once the backup has replayed every logged run, the VM's scheduler moves its room
    there and the backup's host makes it the VM."""
    if (p.log and not discard) or p.replaying is not None:
        return []
    if p.backup_host is None or p.lost_at is None:
        return []
    known = state.vms[p.vm].created
    asked = FailoverRequested(
        vm=p.vm,
        priority=known.priority,
        from_host=p.primary_host,
        backup=p.backup,
        backup_host=p.backup_host,
        lost_at=p.lost_at,
        discarded=len(p.log),
    )
    return [Outcome(events=[asked], cause=p.last, key=f"{p.backup}/failover")]


def _protect_again(state: Ft, p: Pair, reason: str, primary_host: str | None = None) -> Outcome:
    """The pair ends and a new one begins, with a new backup. Until it is loaded the VM
    runs unprotected: what the lost backup had not confirmed of its outputs leaves now,
    before anything it says later."""
    again = ProtectionRequested(
        vm=p.vm,
        mode=p.mode,
        primary_host=primary_host or p.primary_host,
        backup=backup_name(state, p.vm),
        epoch_ms=p.requested.epoch_ms,
    )
    return Outcome(
        events=[*held_outputs(p), ProtectionEnded(vm=p.vm, reason=reason, backup=p.backup), again],
        cause=p.last,
        key=f"{p.backup}/again",
    )


def _place(state: Ft, p: Pair) -> Outcome:
    known = state.vms[p.vm].created
    rules = PlacementRules(
        host_anti_affinity=Affinity(must=[p.primary_host]),
        host_affinity=Affinity(must=[p.requested.backup_host] if p.requested.backup_host else []),
    )
    place = PlaceVm(
        vm=p.backup,
        priority=Owner(known.priority),
        cpu=known.cpu,
        mem_mib=known.mem_mib,
        memory_mode=known.memory_mode,
        seed=known.seed,
        template=known.template,
        inputs=known.inputs,
        power_on=False,
        rules=rules,
        backup_of=p.vm,
    )
    return Outcome(commands=[place], cause=p.last, key=f"{p.backup}/place")


def _copy(p: Pair) -> list[Outcome]:
    """Suspend the primary, export its state, then resume it and have the backup import."""
    n = p.copies
    if "stun" not in p.asked:
        if p.running is not None or (p.log and p.phase is not Phase.RESYNCING):
            # Its run in flight ends (and, before protection, is released) first: the
            # copy holds what it did.
            return []
        stun = StunVm(host=p.primary_host, vm=p.vm)
        return [Outcome(commands=[stun], cause=p.last, key=f"{p.backup}/stun/{n}")]
    if "export" not in p.asked and p.stunned:
        export = ExportPages(
            host=p.primary_host,
            vm=p.vm,
            flow=p.copy_flow,
            # Every page, and the dirty bits cleared: checkpoint epochs start from here.
            selection=Selection.CHECKPOINT,
            batch=COPY_BATCH,
            checksum=True,
        )
        return [Outcome(commands=[export], cause=p.last, key=f"{p.backup}/export/{n}")]
    if p.exported is not None and "import" not in p.asked and p.backup_host is not None:
        resume = UnstunVm(host=p.primary_host, vm=p.vm)
        load = ImportPages(
            host=p.backup_host, vm=p.backup, flow=p.copy_flow, batches=p.exported.batches
        )
        return [Outcome(commands=[resume, load], cause=p.last, key=f"{p.backup}/import/{n}")]
    return []


def _loaded(p: Pair) -> list[Outcome]:
    if p.imported is None or p.exported is None or p.backup_host is None:
        return []
    if p.imported.checksum != p.exported.checksum:
        return [_end(p, "the backup's copy of the primary's state differs from it")]
    loaded = BackupLoaded(
        vm=p.vm,
        backup=p.backup,
        backup_host=p.backup_host,
        primary_checksum=p.exported.checksum or "",
        backup_checksum=p.imported.checksum,
        pages=p.exported.pages,
        bytes=p.exported.bytes,
        from_step=p.log[0].ran.first_step if p.log else 0,
    )
    return [Outcome(events=[loaded], cause=p.last, key=f"{p.backup}/loaded")]


def _run_primary(p: Pair, now: float) -> list[Outcome]:
    """The primary's next epoch, once the one before is logged and its time has come."""
    run = _primary_run(p, now)
    if run is None:
        return []
    # Caused by what moved the pair last: the runs stay in the protection's workflow (its
    # correlation), which `vplane ft protect --wait` follows to BackupLoaded.
    return [Outcome(commands=[run], cause=p.last, key=f"{p.backup}/run/{p.runs}")]


def _primary_run(p: Pair, now: float) -> RunVm | None:
    if p.running is not None or now < p.next_run_at:
        return None
    return RunVm(
        host=p.primary_host,
        vm=p.vm,
        seconds=p.epoch_s,
        tag=p.run_tag(p.runs),
        record=True,
        # A checkpoint's sync point is its stun, whose memory the stun reports.
        checksum_at_start=p.mode is not FtMode.CHECKPOINT,
    )


def _replay(p: Pair) -> list[Outcome]:
    """The backup replays the oldest logged run it has not caught up with."""
    if p.replaying is not None or p.replayed is not None or not p.log or p.backup_host is None:
        return []
    entry = p.log[0]
    ran = entry.ran
    logged = LoggedRun(
        first_step=ran.first_step,
        steps=ran.steps,
        writes_per_step=ran.writes_per_step,
        reads_per_step=ran.reads_per_step,
        inputs=ran.inputs,
    )
    replay = RunVm(
        host=p.backup_host,
        vm=p.backup,
        seconds=0,
        tag=p.replay_tag(entry.index),
        logged=logged,
        checksum_at_start=True,
    )
    return [Outcome(commands=[replay], key=f"{p.backup}/replay/{entry.index}")]


def _sync(p: Pair, now: float) -> list[Outcome]:
    """The backup caught up with the oldest entry: compare, and release its outputs; or,
    when the backup said otherwise, hold them and resynchronise it."""
    if p.replayed is None or not p.log:
        return []
    entry, replayed = p.log[0], p.replayed
    ran = entry.ran
    same_memory = replayed.checksum_at_start == ran.checksum_at_start
    # Lockstep compares what the two say; record/replay also the memories they start from.
    agree = replayed.outputs == ran.outputs and (p.mode is FtMode.LOCKSTEP or same_memory)
    if not agree:
        return [_diverged(p, entry, replayed)]
    synced = PairSynced(
        vm=p.vm,
        mode=p.mode,
        entry=entry.index,
        first_step=ran.first_step,
        steps=ran.steps,
        inputs=len(ran.inputs),
        primary_checksum=ran.checksum_at_start,
        backup_checksum=replayed.checksum_at_start,
        equal=same_memory,
        released=ran.outputs,
        held_ms=round(max(0.0, now - entry.at) * 1000, 3),
    )
    return [Outcome(events=[synced], cause=p.last, key=f"{p.backup}/synced/{entry.index}")]


def _diverged(p: Pair, entry: Entry, replayed: VmRan) -> Outcome:
    """Outputs both said leave; from the first that differs on, all are held."""
    ran = entry.ran
    same = 0
    for mine, theirs in zip(ran.outputs, replayed.outputs, strict=False):
        if mine != theirs:
            break
        same += 1
    differs = ran.outputs[same].seq if same < len(ran.outputs) else None
    diverged = PairDiverged(
        vm=p.vm,
        mode=p.mode,
        entry=entry.index,
        first_step=ran.first_step,
        primary_checksum=ran.checksum_at_start,
        backup_checksum=replayed.checksum_at_start,
        first_different=differs,
        released=ran.outputs[:same],
    )
    return Outcome(events=[diverged], cause=p.last, key=f"{p.backup}/diverged/{entry.index}")


def _resynced(p: Pair) -> list[Outcome]:
    """The backup is the primary's copy again: what was held since leaves, in order."""
    if p.imported is None or p.exported is None:
        return []
    if p.imported.checksum != p.exported.checksum:
        return [_end(p, "the backup's copy of the primary's state differs from it")]
    held = [o for e in p.log for o in e.ran.outputs][p.released_prefix :]
    resynced = PairResynced(
        vm=p.vm,
        primary_checksum=p.exported.checksum or "",
        backup_checksum=p.imported.checksum,
        pages=p.exported.pages,
        bytes=p.exported.bytes,
        released=held,
    )
    return [Outcome(events=[resynced], cause=p.last, key=f"{p.backup}/resynced/{p.copies}")]


def _end(p: Pair, reason: str, *, release: bool = False) -> Outcome:
    """The pair ends; a primary suspended for its state copy resumes, untouched."""
    events, commands = ending(p, reason, release=release)
    return Outcome(events=events, commands=commands, cause=p.last, key=f"{p.backup}/end")


def _drop_backup(state: Ft, p: Pair) -> Outcome:
    """A backup whose pair ended holds room for nothing: it goes."""
    known = state.vms[p.backup]
    destroy = DestroyVm(host=known.host, vm=p.backup)
    return Outcome(commands=[destroy], cause=p.last, key=f"{p.backup}/destroy")
