"""The contention monitor and the tenants service as processes on real brokers: a noisy
neighbour makes a cluster shrink; the monitor killed and restarted rebuilds its state
from the log and repeats none of its actions; the cluster grows back once it clears."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from schemas import Envelope
from schemas.host import HostTelemetry
from schemas.tenants import ClusterScaled, CreateCluster
from schemas.vm import PowerOffVm, VmCreated
from shared.bus import Logged, Stream
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import noisy_neighbour, start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def logged(client: Client, *types: str) -> list[object]:
    return [
        e.envelope.data
        async for e in client.bus.replay()
        if e.envelope is not None and e.envelope.type in types
    ]


async def test_monitor_restarted_mid_episode_repeats_nothing(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    env = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_SPEED": "5",
        "VPLANE_ROUND_SECONDS": "0.2",
        "VPLANE_HA_FAILURES": "0",
        "VPLANE_REBALANCE_THRESHOLD": "1",
    }
    services = [
        ("hosts", env),
        ("scheduler", {**env, "VPLANE_PRIORITY": "high"}),
        ("scheduler", {**env, "VPLANE_PRIORITY": "low"}),
        ("tenants", env),
        ("contention", env),
    ]
    procs = await start_ready(client, services, tmp_path)
    try:
        await client.send(
            CreateCluster(cluster="batch", workers=4, min_workers=1, max_workers=4, worker_cpu=4)
        )
        created = await poll(
            lambda: logged(client, "VmCreated"), lambda c: len(c) == 4, timeout=30, what="workers"
        )
        where = Counter(c.host for c in created if isinstance(c, VmCreated))
        host = where.most_common(1)[0][0]
        # The noisy neighbour goes through the low scheduler, onto the workers' host.
        await client.send(noisy_neighbour(host))
        now = await poll(
            lambda: logged(client, "VmCreated"),
            lambda c: any(isinstance(v, VmCreated) and v.vm == "noisy" for v in c),
            timeout=30,
            what="the noisy VM created",
        )
        assert [v.host for v in now if isinstance(v, VmCreated) and v.vm == "noisy"] == [host]
        await poll(
            lambda: logged(client, "ScalingDecided"), lambda d: len(d) == 1, timeout=30, what="down"
        )

        procs[4].kill()
        procs[4].wait(10)
        procs.append((await start_ready(client, [services[4]], tmp_path))[0])
        # A dozen more ticks of the same contention reach the restarted monitor. It takes
        # them in order: ContentionCleared, which needs calm ticks sent after them, shows
        # that it has taken them all.
        await ticks_of(client, host, 12)
        await client.send(PowerOffVm(vm="noisy", host=host))
        await poll(
            lambda: logged(client, "ContentionCleared"),
            lambda c: len(c) == 1,
            timeout=30,
            what="cleared",
        )
        assert len(await logged(client, "ContentionDetected")) == 1
        shrunk = [
            s
            for s in await logged(client, "ClusterScaled")
            if isinstance(s, ClusterScaled) and "contention" in s.reason
            if s.to_workers < s.from_workers
        ]
        assert len(shrunk) == 1
        assert shrunk[0].to_workers < 4

        decided = await poll(
            lambda: logged(client, "ScalingDecided"), lambda d: len(d) == 2, timeout=30, what="up"
        )
        assert [d.direction for d in decided] == ["down", "up"]  # type: ignore[attr-defined]
        grown = await poll(
            lambda: logged(client, "ClusterScaled"),
            lambda s: len(s) == 3,
            timeout=30,
            what="grown back",
        )
        assert grown[-1].to_workers == 4  # type: ignore[attr-defined]
        # More calm ticks, then a sample the monitor dead-letters: once it has, it has
        # taken every tick before it.
        await ticks_of(client, host, 5)
        await consumed_so_far(client)
        assert len(await logged(client, "ScalingDecided")) == 2
    finally:
        await stop_all(procs)


async def ticks_of(client: Client, host: str, count: int) -> None:
    """Wait for ``count`` telemetry samples of ``host`` from now on."""
    seen = 0
    enough = asyncio.Event()

    async def on_sample(entry: Logged) -> None:
        nonlocal seen
        if entry.envelope is not None and isinstance(entry.envelope.data, HostTelemetry):
            seen += 1
            if seen >= count:
                enough.set()

    sub = await client.bus.watch(Stream.TELEMETRY, (f"host.{host}",), on_sample)
    try:
        await asyncio.wait_for(enough.wait(), 30)
    finally:
        await sub.stop()


async def consumed_so_far(client: Client) -> None:
    """Emit a sample of an unknown host and wait until the monitor has dead-lettered it:
    its telemetry consumer takes samples in order, so it has taken all before it."""
    marker = HostTelemetry(
        host="nowhere",
        tick=1,
        cpu_capacity_mhz=1,
        cpu_demand_mhz=1,
        cpu_used_mhz=1,
        mem_capacity_mib=1,
        mem_reserved_mib=0,
        vms_running=0,
        vms_total=0,
    )
    env = Envelope.wrap(marker, producer="test")
    await client.bus.emit(env)
    await poll(
        lambda: client.bus.dead_letters("contention-monitor-telemetry"),
        lambda dead: any(str(env.id).encode() in d.data for d in dead),
        timeout=30,
        what="the monitor to reach the marker sample",
    )
