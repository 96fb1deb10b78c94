"""The FT service with the hosts and schedulers, on the in-memory bus: a protected VM's
backup is placed apart from it, loaded with its state, and replays its log; every sync
point has equal memories, and outputs leave in order, none twice, only once the backup
has every log entry before them. Requests it cannot do are refused, typed."""

from __future__ import annotations

import itertools
from contextlib import AbstractAsyncContextManager

import pytest

from schemas import Command, Envelope, Message
from schemas.ft import (
    BackupLoaded,
    FtMode,
    FtStatus,
    GetFtStatus,
    OutputsReleased,
    PairDiverged,
    PairResynced,
    PairSynced,
    ProtectionEnded,
    ProtectionRequested,
    ProtectVm,
    UnprotectVm,
    VmFailedOver,
)
from schemas.host import CrashHost
from schemas.memory import VmRan
from schemas.pool import Owner
from schemas.queries import ListVms, VmList
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import GuestInputs, MemoryMode, VmCreated, VmDestroyed, VmStunned
from services.ft.steps import MAX_LAG
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

EPOCH_MS = 200


def ft_stack(hosts: int = 2) -> AbstractAsyncContextManager[Stack]:
    return memory_stack(hosts=hosts, ft=True, ha_failures=0, rebalance_threshold=1.0)


async def place(
    stack: Stack,
    vm: str,
    *,
    host: str = "h1",
    inputs: GuestInputs | None = GuestInputs(packets_per_s=20),  # noqa: B008 - frozen
    mode: MemoryMode = MemoryMode.FULL,
) -> None:
    await stack.client.send(
        PlaceVm(
            vm=vm,
            priority=Owner.LOW,
            cpu=1,
            mem_mib=16,
            memory_mode=mode,
            seed=7,
            inputs=inputs,
            rules=PlacementRules(host_affinity=Affinity(must=[host])),
        )
    )
    await poll(
        lambda: stack.of_type("VmCreated"),
        lambda es: any(isinstance(e.data, VmCreated) and e.data.vm == vm for e in es),
        what=f"{vm} created",
    )


async def answer(stack: Stack, cmd: Command) -> Message:
    [reply] = await stack.client.send_and_wait(cmd, timeout=10)
    return reply.data


def outside(log: list[Envelope[Message]]) -> list[int]:
    """The sequence numbers of the packets the outside world got, in the log's order."""
    seqs = []
    for env in log:
        if isinstance(env.data, PairSynced | OutputsReleased | PairDiverged | PairResynced):
            seqs += [o.seq for o in env.data.released]
    return seqs


def synced(events: list[Envelope[Message]]) -> list[PairSynced]:
    return [e.data for e in events if isinstance(e.data, PairSynced)]


async def test_a_loaded_backup_replays_the_log_with_equal_memories_at_every_sync_point() -> None:
    async with ft_stack() as stack:
        await place(stack, "web")
        requested = await answer(stack, ProtectVm(vm="web", epoch_ms=EPOCH_MS))
        assert isinstance(requested, ProtectionRequested)
        assert (requested.backup, requested.primary_host) == ("web-ft1", "h1")

        [loaded_env] = await poll(
            lambda: stack.of_type("BackupLoaded"), lambda es: len(es) == 1, what="loaded"
        )
        loaded = loaded_env.data
        assert isinstance(loaded, BackupLoaded)
        assert loaded.backup_host == "h2"  # never the primary's host
        assert loaded.primary_checksum == loaded.backup_checksum
        points = synced(
            await poll(lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 8, what="8 syncs")
        )

        # Every sync point: the backup's memory is the primary's where the entry starts.
        assert all(p.equal and p.primary_checksum == p.backup_checksum for p in points)
        entries = [p.entry for p in points]
        assert entries == list(range(entries[0], entries[0] + len(entries)))
        # Outputs leave in the guest's order, each once, without a gap: those it sent
        # while its backup was being set up, then those the sync points release.
        seqs = outside(await stack.events(lambda _: True))
        assert len(seqs) > 0
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        # And only after the backup replayed the entry they came from.
        runs = {
            (e.data.vm, e.data.first_step): e
            for e in await stack.of_type("VmRan")
            if isinstance(e.data, VmRan)
        }
        log = await stack.events(lambda _: True)
        position = {e.id: i for i, e in enumerate(log)}
        for env in await stack.of_type("PairSynced"):
            point = env.data
            assert isinstance(point, PairSynced)
            replay = runs[("web-ft1", point.first_step)]
            assert position[replay.id] < position[env.id]
            assert runs[("web", point.first_step)].data.outputs == point.released  # type: ignore[attr-defined]

        status = await stack.client.query(GetFtStatus())
        assert isinstance(status, FtStatus)
        [pair] = status.pairs
        assert (pair.vm, pair.mode, pair.phase, pair.backup_host) == (
            "web",
            FtMode.RECORD_REPLAY,
            "protected",
            "h2",
        )
        assert pair.entries >= 8
        assert pair.released_outputs >= len(seqs)


async def test_the_primary_leaves_its_hosts_ticks_while_protected() -> None:
    """Between runs the primary's memory does not change: only its FT runs change it."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", epoch_ms=EPOCH_MS))
        await poll(lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 3, what="syncs")
        primary_runs = [
            e.data
            for e in await stack.of_type("VmRan")
            if isinstance(e.data, VmRan) and e.data.vm == "web" and e.data.checksum_at_start
        ]
        # A run starts where the one before it left the memory... which the backup
        # confirms at each sync point; and the steps follow without a gap.
        steps = [(r.first_step, r.steps) for r in primary_runs]
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(steps))


@pytest.mark.parametrize(
    ("cmd", "code"),
    [
        (ProtectVm(vm="ghost"), RejectionCode.UNKNOWN_VM),
        (ProtectVm(vm="acct"), RejectionCode.ACCOUNTING_ONLY),
        (ProtectVm(vm="plain"), RejectionCode.INVALID_REQUEST),
        (ProtectVm(vm="web", backup_host="h1"), RejectionCode.INVALID_REQUEST),
        (ProtectVm(vm="web", backup_host="h9"), RejectionCode.UNKNOWN_HOST),
    ],
)
async def test_what_cannot_be_protected_is_refused_typed(
    cmd: ProtectVm, code: RejectionCode
) -> None:
    async with ft_stack() as stack:
        await place(stack, "web")
        await place(stack, "acct", inputs=None, mode=MemoryMode.ACCOUNTING)
        await place(stack, "plain", inputs=None)
        refused = await answer(stack, cmd)
        assert isinstance(refused, CommandRejected), refused
        assert refused.code == code
        assert await stack.of_type("ProtectionRequested") == []


async def test_protecting_twice_is_refused_and_the_first_protection_goes_on() -> None:
    async with ft_stack() as stack:
        await place(stack, "web")
        first = await answer(stack, ProtectVm(vm="web", epoch_ms=EPOCH_MS))
        again = await answer(stack, ProtectVm(vm="web", epoch_ms=EPOCH_MS))
        assert isinstance(first, ProtectionRequested)
        assert isinstance(again, CommandRejected)
        assert again.code == RejectionCode.ALREADY_EXISTS
        await poll(lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 2, what="syncs")


@pytest.mark.parametrize("mode", list(FtMode))
async def test_a_failover_loses_and_repeats_no_output_and_protection_comes_back(
    mode: FtMode,
) -> None:
    """The backup replays what is left of the log, the VM's reservation moves onto its
    host and it becomes the VM; a new backup then restores protection. The outside world
    sees the guest's packets numbered without a gap or a repeat throughout, and no HA
    restart competes with the failover."""
    async with ft_stack(hosts=3) as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=mode, backup_host="h2", epoch_ms=EPOCH_MS))
        await poll(lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 3, what="syncs")

        [crashed] = await stack.client.send_and_wait(CrashHost(host="h1"), timeout=10)
        assert crashed.type == "HostCrashed"

        [over] = await poll(
            lambda: stack.of_type("VmFailedOver"), lambda es: len(es) == 1, what="failover"
        )
        assert isinstance(over.data, VmFailedOver)
        assert (over.data.vm, over.data.host, over.data.backup) == ("web", "h2", "web-ft1")
        loads = await poll(
            lambda: stack.of_type("BackupLoaded"), lambda es: len(es) == 2, what="re-protected"
        )
        again = loads[1].data
        assert isinstance(again, BackupLoaded)
        assert (again.backup, again.backup_host) == ("web-ft2", "h3")
        assert again.primary_checksum == again.backup_checksum
        log = await poll(
            lambda: stack.events(lambda _: True),
            lambda es: len(synced(es[es.index(loads[1]) :])) >= 3,
            what="syncs after the failover",
        )

        points = synced(log)
        assert all(p.equal and p.primary_checksum == p.backup_checksum for p in points)
        seqs = outside(log)
        assert len(seqs) == len(set(seqs))
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert not [e for e in log if e.type == "VmRestarted"]

        vms = await stack.client.query(ListVms())
        assert isinstance(vms, VmList)
        where = {v.vm: v.host for v in vms.vms}
        assert where["web"] == "h2"
        assert "web-ft1" not in where
        assert where["web-ft2"] == "h3"
        status = await stack.client.query(GetFtStatus())
        assert isinstance(status, FtStatus)
        [pair] = [p for p in status.pairs if p.phase == "protected"]
        assert (pair.primary_host, pair.backup, pair.failovers) == ("h2", "web-ft2", 1)
        assert pair.mode == mode


async def test_checkpoint_epochs_send_the_dirty_pages_and_hold_outputs_until_acknowledged() -> None:
    """Each epoch the primary's dirty pages go to the backup while it is stunned; the
    backup's memory then equals the primary's at the stun, and the epoch's outputs leave."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=FtMode.CHECKPOINT, epoch_ms=EPOCH_MS))
        log = await poll(
            lambda: stack.events(lambda _: True),
            lambda es: len(synced(es)) >= 8,
            what="8 epochs",
        )
    epochs = synced(log)
    assert all(e.mode == FtMode.CHECKPOINT for e in epochs)
    assert all(e.equal and e.primary_checksum == e.backup_checksum for e in epochs)
    assert all(0 < e.pages < 4096 and e.bytes > 0 for e in epochs)  # dirty pages, not all
    # Pages written once after quiet epochs left while the primary ran; the device state
    # page, changed a little by every epoch with an input, travels as a diff once the
    # backup names it (an epoch may see no input: about 4 arrive in one).
    assert sum(e.ahead_pages for e in epochs) > 0
    assert sum(1 for e in epochs[2:] if e.diff_pages) >= len(epochs[2:]) // 2
    assert all(e.bytes <= e.whole_bytes for e in epochs)
    assert sum(e.bytes for e in epochs) < sum(e.whole_bytes for e in epochs)
    stunned = [e.data.checksum for e in log if isinstance(e.data, VmStunned)]
    # The first stun is the state copy's; each later one ends an epoch.
    assert [e.primary_checksum for e in epochs] == stunned[1 : 1 + len(epochs)]
    seqs = outside(log)
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


@pytest.mark.parametrize("mode", [FtMode.RECORD_REPLAY, FtMode.LOCKSTEP])
async def test_the_primary_runs_at_most_a_bounded_log_ahead_of_its_backup(mode: FtMode) -> None:
    """A backup slower than its primary holds the primary back: the outputs held, and
    what a failover must replay, stay a few epochs long."""
    async with ft_stack() as stack:
        await place(stack, "web")
        await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        log = await poll(
            lambda: stack.events(lambda _: True),
            lambda es: len(synced(es)) >= 10,
            what="10 sync points",
        )
    runs = 0
    for env in log:
        if isinstance(env.data, VmRan) and env.data.vm == "web":
            runs += 1
        if isinstance(env.data, PairSynced):
            assert runs - (env.data.entry + 1) <= MAX_LAG


@pytest.mark.parametrize("mode", [FtMode.RECORD_REPLAY, FtMode.CHECKPOINT])
async def test_unprotecting_releases_what_was_held_and_gives_the_backups_room_back(
    mode: FtMode,
) -> None:
    """`vplane ft unprotect`: the outputs the backup had not confirmed leave (no gap, no
    repeat), the backup is destroyed and its reservation released, the VM goes back to
    its host's ticks; it can be protected again, with a new backup."""
    async with ft_stack() as stack:
        await place(stack, "web")
        refused = await answer(stack, UnprotectVm(vm="web"))
        assert isinstance(refused, CommandRejected)
        assert refused.code == RejectionCode.UNKNOWN_VM
        await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        await poll(
            lambda: stack.of_type("PairSynced"), lambda es: len(es) >= 3, what="3 sync points"
        )
        ended = (await stack.client.send_until(UnprotectVm(vm="web"), "ProtectionEnded")).data
        assert isinstance(ended, ProtectionEnded)
        assert (ended.reason, ended.backup) == ("unprotected", "web-ft1")
        await poll(
            lambda: stack.of_type("CapacityReleased"),
            lambda es: any(e.data.reservation == "web-ft1" for e in es),  # type: ignore[attr-defined]
            what="the backup's room given back",
        )
        status = await stack.client.query(GetFtStatus())
        assert isinstance(status, FtStatus)
        [gone] = status.pairs
        assert (gone.phase, gone.backup, gone.held_outputs) == ("ended", "web-ft1", 0)
        again = await answer(stack, ProtectVm(vm="web", mode=mode, epoch_ms=EPOCH_MS))
        assert isinstance(again, ProtectionRequested)
        assert again.backup == "web-ft2"
        log = await poll(
            lambda: stack.events(lambda _: True),
            lambda es: len(synced(es[[e.type for e in es].index("ProtectionEnded") :])) >= 3,
            what="3 sync points of the new backup",
        )
    destroyed = [e.data.vm for e in log if isinstance(e.data, VmDestroyed)]
    assert destroyed == ["web-ft1"]
    seqs = outside(log)
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(p.equal for p in synced(log))
