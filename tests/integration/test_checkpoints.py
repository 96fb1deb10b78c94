"""Checkpoints across processes and kills: a hosts process killed with SIGKILL in the
middle of a save leaves no checkpoint that claims to be complete (its successor says the
save failed), and a checkpoint saved by one hosts process is restored by another, which
shares only the log and the datastore."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.checkpoints import CheckpointList, CheckpointVm, ListCheckpoints, RestoreVm
from schemas.memory import GetVmMemory, VmMemory
from schemas.vm import CreateVm, MemoryMode, PowerOffVm
from shared.bus import RequestFailed
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_ready, stop_all
from tests.reserving import create

pytestmark = [pytest.mark.broker, pytest.mark.integration]


def hosts_env(bus_url: str, client: Client, datastore: Path, prefix: str) -> dict[str, str]:
    return {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "1",
        "VPLANE_HOST_PREFIX": prefix,
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_DATASTORE": str(datastore),
    }


def full(vm: str, host: str, mem_mib: int) -> CreateVm:
    return CreateVm(
        vm=vm, cpu=1, mem_mib=mem_mib, host=host, memory_mode=MemoryMode.FULL, disk_gib=1, seed=9
    )


async def checkpoints(client: Client) -> dict[str, str]:
    reply = await client.query(ListCheckpoints(), timeout=2)
    assert isinstance(reply, CheckpointList)
    return {c.checkpoint: c.state for c in reply.checkpoints}


async def test_a_save_killed_midway_never_claims_to_be_complete(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    datastore = tmp_path / "datastore"
    env = hosts_env(bus_url, client, datastore, "h")
    [first] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        made = await create(client, full("big", "h1", 1024), timeout=60)
        assert made.type == "VmCreated", made.data
        [started] = await client.send_and_wait(
            CheckpointVm(vm="big", host="h1", checkpoint="c1"), timeout=30
        )
        assert started.type == "CheckpointStarted", started.data
    finally:
        # As soon as the stop is in the log: 1 GiB is still being written.
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    types = [e.type async for e in _events(client)]
    assert "CheckpointCompleted" not in types
    assert not list(datastore.rglob("c1.vmstate"))

    [second] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        states = await poll(
            lambda: checkpoints(client),
            lambda s: s.get("c1") == "failed",
            timeout=30,
            what="the cut-short save told failed",
        )
        assert states == {"c1": "failed"}
        assert not list(datastore.rglob("*c1.vmstate*"))
    finally:
        await stop_all([second])
    types = [e.type async for e in _events(client)]
    assert types.count("CheckpointFailed") == 1
    assert "CheckpointCompleted" not in types


async def test_a_checkpoint_saved_by_one_hosts_process_is_restored_by_another(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    datastore = tmp_path / "datastore"
    procs = await start_ready(
        client,
        [
            ("hosts", hosts_env(bus_url, client, datastore, "a")),
            ("hosts", hosts_env(bus_url, client, datastore, "b")),
        ],
        tmp_path,
    )
    try:
        for vm, host in (("src", "a1"), ("dst", "b1")):
            made = await create(client, full(vm, host, 128), timeout=30)
            assert made.type == "VmCreated", made.data
        saved = await client.send_until(
            CheckpointVm(vm="src", host="a1", checkpoint="gold"),
            "CheckpointCompleted",
            timeout=60,
        )
        assert saved.type == "CheckpointCompleted", saved.data
        [off] = await client.send_and_wait(PowerOffVm(vm="dst", host="b1"), timeout=10)
        assert off.type == "VmPoweredOff", off.data
        [restored] = await client.send_and_wait(
            RestoreVm(vm="dst", host="b1", checkpoint="gold"), timeout=60
        )
        assert restored.type == "VmRestored", restored.data
        # Either process may answer a query, and only the one running dst can say.
        memory = await poll(
            lambda: _memory(client, "dst"),
            lambda m: m is not None,
            timeout=20,
            what="dst's memory from the process that runs it",
        )
        assert memory is not None
        assert memory.checksum == saved.data.memory_checksum  # type: ignore[attr-defined]
    finally:
        await stop_all(procs)


async def _memory(client: Client, vm: str) -> VmMemory | None:
    try:
        reply = await client.query(GetVmMemory(vm=vm), timeout=10)
    except RequestFailed:
        return None
    assert isinstance(reply, VmMemory)
    return reply


async def _events(client: Client) -> AsyncIterator[Envelope[Message]]:
    async for entry in client.bus.replay():
        if entry.envelope is not None:
            yield entry.envelope
