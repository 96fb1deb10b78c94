"""FT with every service as a process, on each broker: a protected VM's hosts process is
SIGKILLed; once the schedulers declare its host failed, the backup (in another hosts
process) replays what is left of the log (in checkpoint mode: keeps the last
acknowledged epoch) and takes over, a new backup restores
protection, and the outside world got the guest's packets without a gap or a repeat."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.ft import BackupLoaded, FtMode, ProtectionRequested, ProtectVm, VmFailedOver
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.vm import GuestInputs, MemoryMode
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_ready, stop_all
from tests.unit.ft.test_service import outside, synced

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def logged(client: Client) -> list[Envelope[Message]]:
    return [entry.envelope async for entry in client.bus.replay() if entry.envelope is not None]


def of_type(log: list[Envelope[Message]], kind: str) -> list[Envelope[Message]]:
    return [e for e in log if e.type == kind]


@pytest.mark.parametrize("mode", [FtMode.RECORD_REPLAY, FtMode.CHECKPOINT])
async def test_a_killed_primary_hosts_process_fails_over_to_the_backup(
    client: Client, bus_url: str, tmp_path: Path, mode: FtMode
) -> None:
    base = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_SPEED": "10",
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_HA_FAILURES": "0",
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += await start_ready(
            client,
            [
                ("hosts", {**base, "VPLANE_HOSTS": "1", "VPLANE_HOST_PREFIX": "a"}),
                ("hosts", {**base, "VPLANE_HOSTS": "2", "VPLANE_HOST_PREFIX": "b"}),
                ("scheduler", {**base, "VPLANE_PRIORITY": "high"}),
                ("scheduler", {**base, "VPLANE_PRIORITY": "low"}),
                ("ft", base),
            ],
            tmp_path,
        )
        await client.send(
            PlaceVm(
                vm="web",
                priority=Owner.LOW,
                cpu=1,
                mem_mib=32,
                memory_mode=MemoryMode.FULL,
                seed=3,
                inputs=GuestInputs(packets_per_s=20),
                rules=PlacementRules(host_affinity=Affinity(must=["a1"])),
            )
        )
        await poll(
            lambda: logged(client),
            lambda log: bool(of_type(log, "VmCreated")),
            timeout=30,
            what="web created",
        )
        [answer] = await client.send_and_wait(
            ProtectVm(vm="web", mode=mode, backup_host="b1", epoch_ms=200), timeout=30
        )
        assert isinstance(answer.data, ProtectionRequested), answer.data
        await poll(
            lambda: logged(client),
            lambda log: len(synced(log)) >= 3,
            timeout=60,
            what="3 sync points",
        )

        # SIGKILL: the primary's host just falls silent.
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        log = await poll(
            lambda: logged(client),
            lambda log: (
                len(of_type(log, "BackupLoaded")) == 2
                and len(synced(log[log.index(of_type(log, "BackupLoaded")[1]) :])) >= 3
            ),
            timeout=90,
            what="the failover and a new backup in step",
        )
    finally:
        await stop_all(procs)

    [over] = [e.data for e in of_type(log, "VmFailedOver")]
    assert isinstance(over, VmFailedOver)
    assert (over.vm, over.from_host, over.host, over.backup) == ("web", "a1", "b1", "web-ft1")
    again = of_type(log, "BackupLoaded")[1].data
    assert isinstance(again, BackupLoaded)
    assert (again.backup, again.backup_host) == ("web-ft2", "b2")
    assert again.primary_checksum == again.backup_checksum
    points = synced(log)
    assert all(p.equal and p.primary_checksum == p.backup_checksum for p in points)
    seqs = outside(log)
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert not of_type(log, "VmRestarted")
