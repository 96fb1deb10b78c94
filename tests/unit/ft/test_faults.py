"""FT under faults, on the in-memory bus: the FT service killed mid-log or mid-epoch, the
hosts process restarted (the backup copied again), the backup's host lost (protection
starts again elsewhere), a crash while the pair is being set up (protection ends, the
primary runs on untouched); and a protected VM is not migrated from under its FT service.
Through all of it the outside world gets the guest's packets without a gap or a repeat."""

from __future__ import annotations

import itertools

import pytest

from schemas import Envelope, Message
from schemas.ft import BackupLoaded, FtMode, ProtectionEnded, ProtectVm
from schemas.host import CrashHost
from schemas.memory import GetVmMemory, VmMemory
from schemas.pool import Owner
from schemas.scheduling import MigrateVm
from schemas.service import CommandRejected, RejectionCode
from shared.testing import poll
from tests.unit.ft.test_service import EPOCH_MS, answer, ft_stack, outside, place, synced
from tests.unit.stack import Stack


async def syncs_after(stack: Stack, count: int, after: int = 0) -> list[Envelope[Message]]:
    """The log once ``count`` sync points follow its first ``after`` entries."""
    return await poll(
        lambda: stack.events(lambda _: True),
        lambda log: len(synced(log[after:])) >= count,
        what=f"{count} sync points",
    )


def gapless(seqs: list[int]) -> bool:
    """Numbered without a gap (a failure shows where the first one is)."""
    for at, (a, b) in enumerate(itertools.pairwise(seqs)):
        assert b == a + 1, f"a gap after {a}: {seqs[max(0, at - 5) : at + 5]}"
    return len(seqs) > 0


@pytest.mark.parametrize("mode", list(FtMode))
async def test_the_ft_service_killed_mid_log_goes_on_from_the_log(mode: FtMode) -> None:
    """Killed wherever it is in its cycle (a run logged and not replayed, an epoch stunned
    and not imported...), the FT service rebuilt from the log takes the next step."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        for _ in range(3):
            before = len(await stack.events(lambda _: True))
            await syncs_after(stack, 2, before)
            await stack.kill("ft")
            await stack.start("ft")
        log = await syncs_after(stack, 3, len(await stack.events(lambda _: True)))

        points = synced(log)
        assert all(p.equal for p in points)
        entries = [p.entry for p in points]
        assert entries == sorted(set(entries))
        assert gapless(outside(log))


@pytest.mark.parametrize("mode", list(FtMode))
async def test_a_restarted_hosts_process_is_brought_back_in_step(mode: FtMode) -> None:
    """The hosts process rebuilds its guests from the log, which does not hold the pages
    a state copy or an epoch moved: the backup's memory is then not the primary's. The
    next sync point catches it, the backup is copied again, and the outputs held
    meanwhile leave in order."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        await syncs_after(stack, 3)
        await stack.kill("hosts")
        await stack.start("hosts")
        before = len(await stack.events(lambda _: True))
        log = await poll(
            lambda: stack.events(lambda _: True),
            lambda log: len([p for p in synced(log[before:]) if p.equal]) >= 3,
            what="3 equal sync points after the restart",
        )
    after = log[before:]
    assert not [e for e in after if isinstance(e.data, ProtectionEnded)]
    resynced = [e for e in after if e.type == "PairResynced"]
    diverged = [e for e in after if e.type == "PairDiverged"]
    assert len(resynced) == len(diverged)
    assert gapless(outside(log))
    seqs = outside(log)
    assert len(seqs) == len(set(seqs))


async def test_a_lost_backup_host_brings_a_new_backup_and_what_it_held_leaves_in_order() -> None:
    async with ft_stack(hosts=3) as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", backup_host="h2", epoch_ms=EPOCH_MS))
        await syncs_after(stack, 3)
        await stack.client.send_and_wait(CrashHost(host="h2"), timeout=10)

        loads = await poll(
            lambda: stack.of_type("BackupLoaded"), lambda es: len(es) == 2, what="a new backup"
        )
        again = loads[1].data
        assert isinstance(again, BackupLoaded)
        assert (again.backup, again.backup_host) == ("web-ft2", "h3")
        log = await syncs_after(stack, 3, len(await stack.events(lambda _: True)))
        ended = [e.data for e in log if isinstance(e.data, ProtectionEnded)]
        assert [e.reason for e in ended] == ["the backup's host h2 was lost"]
        assert all(p.equal for p in synced(log))
        seqs = outside(log)
        assert gapless(seqs)
        assert len(seqs) == len(set(seqs))


async def test_a_crash_while_the_pair_is_set_up_ends_protection_and_the_primary_runs_on() -> None:
    """The backup's only possible host fails at once: protection ends, wherever it had
    got to, and the primary (suspended for the copy, maybe) runs in its host's ticks."""
    async with ft_stack(hosts=2) as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", backup_host="h2", epoch_ms=EPOCH_MS))
        await stack.client.send_and_wait(CrashHost(host="h2"), timeout=10)
        await poll(lambda: stack.of_type("ProtectionEnded"), lambda es: len(es) >= 1, what="end")

        async def checksum() -> str | None:
            reply = await stack.client.query(GetVmMemory(vm="web"))
            assert isinstance(reply, VmMemory)
            return reply.checksum

        first = await checksum()
        await poll(checksum, lambda now: now != first, what="the primary running again")
        stunned = await stack.of_type("VmStunned", "VmUnstunned")
        assert len(stunned) % 2 == 0  # every stun was undone


async def test_a_protected_vm_is_not_migrated_from_under_its_ft_service() -> None:
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", epoch_ms=EPOCH_MS))
        [refused] = await stack.client.send_and_wait(
            MigrateVm(vm="web", priority=Owner.LOW, target="h2"), timeout=10
        )
        assert isinstance(refused.data, CommandRejected)
        assert refused.data.code == RejectionCode.WRONG_STATE
