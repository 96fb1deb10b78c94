"""Checkpoint mode, pure: continuous checkpoints of the primary's dirty memory.

Every epoch the primary runs (its inputs logged, its outputs held). While it runs, the
dirty pages its host's history shows unwritten for several epochs are sent. Then it is
stunned; the pages still dirty are exported, it resumes (and runs its next epoch), and
the backup imports both flows at once: it never holds half an epoch. Pages the backup names as
candidates (it holds them and their last change touched few bytes) travel as compressed
XOR diffs. The epoch is acknowledged (PairSynced) when the backup's memory equals the
primary's at the stun, and only then do the epoch's outputs leave. The first copy
(``steps._copy``) clears the dirty bits, so the first epoch sends what the primary wrote
since.
"""

from __future__ import annotations

from schemas import Command
from schemas.ft import PairDiverged, PairSynced
from schemas.memory import (
    ExportPages,
    ImportPages,
    PagesExported,
    PagesImported,
    RunVm,
    Selection,
)
from schemas.vm import StunVm, UnstunVm
from services.ft.state import Pair
from shared.outcome import Outcome

# Pages per chunk of an epoch's flow.
EPOCH_BATCH = 128


def epoch_steps(p: Pair, now: float, run: RunVm | None = None) -> list[Outcome]:
    """The epoch's next step: once its run is logged, send what is settled, stun, export
    the dirty pages, resume the primary and import them into the backup, then
    acknowledge. The primary's next run (``run``, when it is due) goes with its resume,
    while the epoch is imported."""
    last = p.epoch_end
    if last is None or (p.closing is None and p.running is not None):
        return []
    key = f"{p.backup}/epoch/{last}"
    acked = acknowledged(p, now)
    if acked is not None and not acked.equal:
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
    if acked is not None:
        return [Outcome(events=[acked], cause=p.last, key=f"{key}/acked")]
    step = _next(p, last, run)
    if step is None:
        return []
    name, commands = step
    return [Outcome(commands=commands, cause=p.last, key=f"{key}/{name}")]


def _next(p: Pair, last: int, run: RunVm | None) -> tuple[str, list[Command]] | None:
    flow, ahead = p.epoch_flow(last), p.ahead_flow(last)
    if f"stun:{last}" not in p.asked:
        return "close", _close(p, flow, ahead)
    sent, exported = p.sent_ahead, p.exported
    if sent is None or sent.flow != ahead or exported is None or exported.flow != flow:
        return None
    if not p.stunned or p.backup_host is None or f"import:{last}" in p.asked:
        return None
    load = ImportPages(
        host=p.backup_host,
        vm=p.backup,
        flow=flow,
        batches=exported.batches,
        ahead_flow=ahead,
        ahead_batches=sent.batches,
        candidates=True,
    )
    resume = UnstunVm(host=p.primary_host, vm=p.vm)
    # One batch: the primary's host resumes it and runs its next epoch in that order.
    return "save", [resume, *([] if run is None else [run]), load]


def _close(p: Pair, flow: str, ahead: str) -> list[Command]:
    """The primary's settled dirty pages leave before it is stunned, the rest while it
    is: one batch of commands, which its host takes in order."""
    candidates = list(p.candidates)
    return [
        ExportPages(
            host=p.primary_host,
            vm=p.vm,
            flow=ahead,
            selection=Selection.SETTLED,
            batch=EPOCH_BATCH,
            candidates=candidates,
        ),
        StunVm(host=p.primary_host, vm=p.vm),
        ExportPages(
            host=p.primary_host,
            vm=p.vm,
            flow=flow,
            selection=Selection.DIRTY,
            batch=EPOCH_BATCH,
            epoch=True,
            candidates=candidates,
        ),
    ]


def acknowledged(p: Pair, now: float) -> PairSynced | None:
    """The epoch's acknowledgement, once the backup imported its pages."""
    last = p.epoch_end
    exported, imported = p.exported, p.imported
    if last is None or exported is None or imported is None:
        return None
    if imported.flow != p.epoch_flow(last) or exported.flow != imported.flow:
        return None
    return _synced(p, exported, imported, now)


def _synced(p: Pair, exported: PagesExported, imported: PagesImported, now: float) -> PairSynced:
    epoch = p.epoch
    first, last = epoch[0], epoch[-1]
    parts = [exported] if p.sent_ahead is None else [exported, p.sent_ahead]
    stun = 0.0
    if p.stunned_at is not None and p.unstunned_at is not None:
        stun = max(0.0, p.unstunned_at - p.stunned_at) * 1000
    return PairSynced(
        vm=p.vm,
        mode=p.mode,
        entry=last.index,
        first_step=first.ran.first_step,
        steps=sum(e.ran.steps for e in epoch),
        inputs=sum(len(e.ran.inputs) for e in epoch),
        primary_checksum=p.stun_checksum,
        backup_checksum=imported.checksum,
        equal=p.stun_checksum == imported.checksum,
        released=[o for e in epoch for o in e.ran.outputs],
        held_ms=round(max(0.0, now - first.at) * 1000, 3),
        pages=sum(e.pages for e in parts),
        bytes=sum(e.bytes for e in parts),
        ahead_pages=0 if p.sent_ahead is None else p.sent_ahead.pages,
        diff_pages=sum(e.diff_pages for e in parts),
        whole_bytes=sum(e.bytes if e.whole_bytes is None else e.whole_bytes for e in parts),
        stun_ms=round(stun, 3),
    )
