"""Divergence: bytes of a backup flipped (``vplane ft diverge``) make it say otherwise
from its next output; the pair notices at that output (lockstep) or sync point
(record/replay), holds every output from there on while the primary is paused and the
backup copied again, then releases them in order: nothing left before it was confirmed,
nothing lost or said twice."""

from __future__ import annotations

import pytest

from schemas import Envelope, Message
from schemas.ft import (
    DivergeBackup,
    DivergenceInjected,
    FtMode,
    PairDiverged,
    PairResynced,
    PairSynced,
    ProtectVm,
)
from schemas.memory import VmRan
from schemas.service import CommandRejected, RejectionCode
from shared.effects import named
from shared.testing import poll
from tests.unit.ft.test_service import EPOCH_MS, answer, ft_stack, outside, place, synced


def index_of(log: list[Envelope[Message]], kind: str) -> int:
    return next(i for i, e in enumerate(log) if e.type == kind)


async def diverged_run(mode: FtMode, then: str) -> list[Envelope[Message]]:
    """A protected VM's log from the start until three sync points follow the first
    ``then`` event after its backup's bytes were flipped."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        await poll(lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 3, what="syncs")
        injected = await answer(stack, DivergeBackup(vm="web"))
        assert isinstance(injected, DivergenceInjected)
        return await poll(
            lambda: stack.events(lambda _: True),
            lambda es: (
                any(e.type == then for e in es) and len(synced(es[index_of(es, then) :])) >= 3
            ),
            what=f"three sync points after {then}",
        )


@pytest.mark.parametrize("mode", [FtMode.LOCKSTEP, FtMode.RECORD_REPLAY])
async def test_a_diverged_backup_is_caught_at_its_next_output_and_made_equal_again(
    mode: FtMode,
) -> None:
    log = await diverged_run(mode, "PairResynced")

    flipped, diverged_at = index_of(log, "GuestBytesFlipped"), index_of(log, "PairDiverged")
    resynced_at = index_of(log, "PairResynced")
    diverged, resynced = log[diverged_at].data, log[resynced_at].data
    assert isinstance(diverged, PairDiverged)
    assert isinstance(resynced, PairResynced)
    assert diverged.mode == mode
    # Caught at the first output the backup made after the flip: every entry synced in
    # between was replayed before it (or, in lockstep, sent nothing to compare: its
    # memories already differ), and the one that diverged after it.
    replays = {e.data.tag: i for i, e in enumerate(log) if isinstance(e.data, VmRan)}

    def replayed_at(entry: int) -> int:
        return replays[named("ft-replay", "web", "web-ft1", entry)]

    for env in log[flipped:diverged_at]:
        if isinstance(env.data, PairSynced) and replayed_at(env.data.entry) > flipped:
            assert mode is FtMode.LOCKSTEP
            assert not env.data.released
            assert not env.data.equal
    assert replayed_at(diverged.entry) > flipped
    if mode is FtMode.LOCKSTEP:
        assert diverged.first_different is not None
    else:
        assert diverged.primary_checksum != diverged.backup_checksum
    # Quasi-lockstep: nothing left between the divergence and the resynchronisation.
    between = log[diverged_at + 1 : resynced_at]
    assert not [e for e in between if e.type in ("PairSynced", "OutputsReleased")]
    assert resynced.primary_checksum == resynced.backup_checksum
    after = synced(log[resynced_at:])
    assert all(p.equal and p.primary_checksum == p.backup_checksum for p in after)
    seqs = outside(log)
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_only_a_backup_in_step_can_be_made_to_diverge() -> None:
    async with ft_stack() as stack:
        await place(stack, "web")
        refused = await answer(stack, DivergeBackup(vm="web"))
        assert isinstance(refused, CommandRejected)
        assert refused.code == RejectionCode.UNKNOWN_VM


async def test_in_checkpoint_mode_the_next_epoch_overwrites_what_was_flipped() -> None:
    """The flipped bytes are in the backup's execution state, which the primary dirties
    every epoch: the next epoch's pages overwrite them, and every epoch after the flip
    ends with equal memories (a flip of a page the primary left alone would be caught
    there, as a divergence, and the backup copied again)."""
    log = await diverged_run(FtMode.CHECKPOINT, "GuestBytesFlipped")
    after = synced(log[index_of(log, "GuestBytesFlipped") :])
    assert all(p.equal for p in after)
    seqs = outside(log)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
