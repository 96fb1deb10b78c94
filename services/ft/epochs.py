"""Checkpoint mode, pure: continuous checkpoints of the primary's dirty memory.

Every epoch the primary runs (its inputs logged, its outputs held). Its host then takes
one batch: the dirty pages its per-page history shows unwritten for several epochs are
sent (while it runs, not stunned), it is stunned, the pages still dirty are sent, it
resumes and runs its next epoch. Pages the backup names as candidates (it holds them and
their last change touched few bytes) travel as compressed XOR diffs. The backup imports
an epoch's two flows at once (it never holds half an epoch), while the primary's host
closes the next one: one trip through the log an epoch. The epoch is acknowledged
(PairSynced) when the backup's memory equals the primary's at the stun, and only then
do its outputs leave. The first copy (``steps._copy``) clears the dirty bits, so the
first epoch sends what the primary wrote since.
"""

from __future__ import annotations

from schemas import Command
from schemas.ft import PairDiverged, PairSynced
from schemas.memory import (
    ExportPages,
    ImportPages,
    RunVm,
    Selection,
)
from schemas.vm import StunVm, UnstunVm
from services.ft.state import Pair
from shared.outcome import Outcome

# Pages per chunk of an epoch's flow.
EPOCH_BATCH = 128


def epoch_steps(p: Pair, now: float, run: RunVm | None = None) -> list[Outcome]:
    """The epochs' next step: acknowledge the one the backup imported; import the one
    closed, and close the next (its run logged) with the primary's next run (``run``,
    when it is due) in the same batch."""
    acked = acknowledged(p, now)
    if acked is not None and p.saving is not None:
        key = f"{p.backup}/epoch/{p.saving.end}"
        if acked.equal:
            return [Outcome(events=[acked], cause=p.last, key=f"{key}/acked")]
        # The backup's copy is not the primary's: every output is held while it is made
        # equal again.
        diverged = PairDiverged(
            vm=p.vm,
            mode=p.mode,
            entry=acked.entry,
            first_step=acked.first_step,
            primary_checksum=acked.primary_checksum,
            backup_checksum=acked.backup_checksum,
        )
        return [Outcome(events=[diverged], cause=p.last, key=f"{key}/diverged")]
    importing = _import(p)
    closing = p.closing if importing is None else None
    end = p.epoch_end if importing is None else _next_end(p)
    commands: list[Command] = [] if importing is None else [importing]
    parts = [] if importing is None else [f"import-{p.closing}"]
    if closing is None and end is not None and p.running is None:
        commands += _close(p, end, run)
        parts.append(f"close-{end}")
    elif run is not None and _idle(p):
        commands.append(run)
    else:
        run = None
    if not commands:
        return []
    key = "/".join([p.backup, "epochs", *parts, *([] if run is None else [run.tag])])
    return [Outcome(commands=commands, cause=p.last, key=key)]


def _import(p: Pair) -> ImportPages | None:
    """The epoch closed, once its host sent it and the one before is acknowledged."""
    end, sent, exported = p.closing, p.sent_ahead, p.exported
    if end is None or p.saving is not None or p.backup_host is None or not p.stunned:
        return None
    if sent is None or exported is None or exported.flow != p.epoch_flow(end):
        return None
    if sent.flow != p.ahead_flow(end):
        return None
    return ImportPages(
        host=p.backup_host,
        vm=p.backup,
        flow=exported.flow,
        batches=exported.batches,
        ahead_flow=sent.flow,
        ahead_batches=sent.batches,
        candidates=True,
    )


def _next_end(p: Pair) -> int | None:
    """With the epoch closed now being imported: the run logged after it, if any."""
    closed = p.closing if p.closing is not None else -1
    return p.log[-1].index if p.log and p.log[-1].index > closed else None


def _idle(p: Pair) -> bool:
    """The primary has no run in flight, and every run logged is closed: it waits."""
    if p.running is not None:
        return False
    done = [-1, *([] if p.closing is None else [p.closing])]
    done += [] if p.saving is None else [p.saving.end]
    return not p.log or p.log[-1].index <= max(done)


def _close(p: Pair, end: int, run: RunVm | None) -> list[Command]:
    """One batch for the primary's host, which takes it in order: the settled dirty pages
    leave while the primary runs, it is stunned, the rest leave, it resumes and runs on."""
    candidates = list(p.candidates)
    return [
        ExportPages(
            host=p.primary_host,
            vm=p.vm,
            flow=p.ahead_flow(end),
            selection=Selection.SETTLED,
            batch=EPOCH_BATCH,
            candidates=candidates,
        ),
        StunVm(host=p.primary_host, vm=p.vm),
        ExportPages(
            host=p.primary_host,
            vm=p.vm,
            flow=p.epoch_flow(end),
            selection=Selection.DIRTY,
            batch=EPOCH_BATCH,
            epoch=True,
            candidates=candidates,
        ),
        UnstunVm(host=p.primary_host, vm=p.vm),
        *([] if run is None else [run]),
    ]


def acknowledged(p: Pair, now: float) -> PairSynced | None:
    """The acknowledgement of the epoch being saved, once the backup imported it."""
    saving, imported = p.saving, p.imported
    if saving is None or imported is None or imported.flow != saving.flow:
        return None
    epoch = p.epoch(saving.end)
    first, last = epoch[0], epoch[-1]
    parts = [saving.exported, saving.sent_ahead]
    return PairSynced(
        vm=p.vm,
        mode=p.mode,
        entry=last.index,
        first_step=first.ran.first_step,
        steps=sum(e.ran.steps for e in epoch),
        inputs=sum(len(e.ran.inputs) for e in epoch),
        primary_checksum=saving.stun_checksum,
        backup_checksum=imported.checksum,
        equal=saving.stun_checksum == imported.checksum,
        released=[o for e in epoch for o in e.ran.outputs],
        held_ms=round(max(0.0, now - first.at) * 1000, 3),
        pages=sum(e.pages for e in parts),
        bytes=sum(e.bytes for e in parts),
        ahead_pages=saving.sent_ahead.pages,
        diff_pages=sum(e.diff_pages for e in parts),
        whole_bytes=sum(e.bytes if e.whole_bytes is None else e.whole_bytes for e in parts),
    )
