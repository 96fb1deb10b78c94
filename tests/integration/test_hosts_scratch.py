"""Scratch space allocated and released by the running hosts service on each broker, and rebuilt
from the log by a restarted one."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import Command, Message
from schemas.scratch import AllocateScratch, ReleaseScratch, ScratchAllocated, ScratchReleased
from schemas.service import CommandRejected, RejectionCode
from shared.client import Client
from tests.integration.stack import start_ready, stop_all
from tests.integration.test_hosts_migrations import create, next_sample, settings

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def answer(client: Client, cmd: Command) -> Message:
    [event] = await client.send_and_wait(cmd, timeout=10)
    return event.data


async def allocated(client: Client, cmd: AllocateScratch) -> ScratchAllocated:
    data = await answer(client, cmd)
    assert isinstance(data, ScratchAllocated), data
    return data


async def refused(client: Client, cmd: Command) -> RejectionCode:
    data = await answer(client, cmd)
    assert isinstance(data, CommandRejected), data
    return data.code


async def scratch_in_telemetry(client: Client, used_mib: float) -> dict[str, float]:
    """Each VM's scratch space in the first sample of h1 whose pool use is ``used_mib``."""
    sample = await next_sample(client, "h1", lambda t: t.scratch_used_mib == used_mib)
    assert sample.scratch_capacity_mib == 200 * 1024
    return {v.vm: v.scratch_mib for v in sample.vms}


async def test_scratch_is_allocated_limited_released_and_rebuilt_after_a_restart(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """Two VMs take scratch space; one over its quota is refused; telemetry shows the use
    and a release gives it back; a restarted service holds the same allocations and
    quotas, and numbers new extents after the old ones."""
    env = settings(client, bus_url, VPLANE_HOSTS="1")
    first = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        for vm in ("w1", "w2"):
            await create(client, vm, "h1")
        got = await allocated(client, AllocateScratch(host="h1", vm="w1", tag="job-1", mib=1024))
        assert got.model_dump() == {
            "host": "h1",
            "vm": "w1",
            "tag": "job-1",
            "mib": 1024,
            "extent": 0,
            "quota_mib": 50 * 1024,
            "used_mib": 1024,
            "pool_used_mib": 1024,
        }
        got = await allocated(
            client, AllocateScratch(host="h1", vm="w2", tag="job-1", mib=2048, quota_mib=4096)
        )
        assert got.pool_used_mib == 3072
        over_quota = AllocateScratch(host="h1", vm="w2", tag="job-2", mib=4096)
        assert await refused(client, over_quota) == RejectionCode.INSUFFICIENT_CAPACITY
        assert await scratch_in_telemetry(client, 3072) == {"w1": 1024, "w2": 2048}

        freed = await answer(client, ReleaseScratch(host="h1", vm="w1"))
        assert freed == ScratchReleased(host="h1", vm="w1", mib=1024, pool_used_mib=2048)
        assert await scratch_in_telemetry(client, 2048) == {"w1": 0, "w2": 2048}
    finally:
        assert await stop_all(first) == [0]

    second = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        assert await scratch_in_telemetry(client, 2048) == {"w1": 0, "w2": 2048}
        over_quota = AllocateScratch(host="h1", vm="w2", tag="job-2", mib=2049)
        assert await refused(client, over_quota) == RejectionCode.INSUFFICIENT_CAPACITY
        got = await allocated(client, AllocateScratch(host="h1", vm="w2", tag="job-2", mib=2048))
        assert (got.extent, got.used_mib, got.quota_mib) == (2, 4096, 4096)
    finally:
        assert await stop_all(second) == [0]
