"""A restart changes no decision: the same telemetry given to the contention monitor and
to the tenants' job trackers, once without a restart and once with a restart after every
sample, leads to the same events, in the same order, at the same emulated times.

The samples are made here, tick by tick (not by the hosts' wall-clock loop), so that both
runs see exactly the same input; what a decision reads besides the log (streaks, task
progress) is what a restart would otherwise forget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from schemas import Envelope, Event, Message
from schemas.host import HostTelemetry, VmSample
from schemas.pool import Owner
from schemas.service import CommandsIssued
from schemas.tenants import ClusterCreated, ClusterScaled, CreateCluster, JobSubmitted, SubmitJob
from schemas.vm import VmCreated
from services.hosts.bootstrap import host_shape
from shared.testing import eventually
from tests.unit.stack import Stack, service_stack

WORKERS = [f"c-w{i}" for i in range(4)]
# Per tick: how slowed down the workers are (1.0: not at all). Blips, a detection, a
# calm spell that clears it, a second episode: streaks that a restart would cut.
SLOWDOWNS = [1.0, 2.5, 1.0, 2.5, 2.5, 2.5, 1.2, 1.0, 2.5, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 1.0]
TICK = 5.0


def sample(tick: int, slowdown: float) -> HostTelemetry:
    vms = [
        VmSample(
            vm=vm,
            state="on",
            cpu_demand_mhz=4000,
            cpu_used_mhz=4000 / slowdown,
            cpu_ready_ms=900 if slowdown > 1.5 else 10,
            cpu_latency_pct=0,
            mem_active_mib=1,
            mem_balloon_mib=0,
            mem_swap_mib=0,
            net_tx_mbps=0,
            net_rx_mbps=0,
            storage_read_mbs=0,
            storage_write_mbs=0,
            slowdown=slowdown,
        )
        for vm in WORKERS
    ]
    return HostTelemetry(
        host="h1",
        tick=tick,
        cpu_capacity_mhz=38_400,
        cpu_demand_mhz=int(16_000 * slowdown),
        cpu_used_mhz=16_000,
        mem_capacity_mib=65_536,
        mem_reserved_mib=len(WORKERS) * 4096,
        vms_running=len(WORKERS),
        vms_total=len(WORKERS),
        vms=vms,
    )


async def given(stack: Stack, *events: Event) -> None:
    """Facts the hosts would have logged."""
    for event in events:
        await stack.bus.append(Envelope.wrap(event, producer="hosts"))


def worker_created(vm: str) -> VmCreated:
    return VmCreated(vm=vm, host="h1", cpu=2, mem_mib=4096, priority="low", powered_on=True, seed=1)


async def feed(stack: Stack, service: str, restart: bool) -> None:
    """Each sample, once the one before it is answered; with ``restart``, the service is
    stopped and started again from the log after each."""
    for tick, slowdown in enumerate(SLOWDOWNS, start=1):
        env = Envelope.wrap(sample(tick, slowdown), producer="hosts", sim_time=tick * TICK)
        runtime = stack.running[service].runtime
        await stack.bus.emit(env)
        await eventually(lambda env=env, r=runtime: env.id in r.answered, what=f"tick {tick}")  # type: ignore[misc]
        if restart:
            await stack.restart(service)


Decisions = list[tuple[str, float, dict[str, Any]]]


def decisions(
    envs: Sequence[Envelope[Message]], service: str, left_out: Callable[[Message], bool]
) -> Decisions:
    """The service's events and the commands its outbox records, by type, emulated time
    and content (ids and wall times differ from run to run)."""
    out: Decisions = []
    for e in envs:
        if e.producer != service or e.type in {"ServiceStarted", "ServiceStopped"}:
            continue
        if isinstance(e.data, CommandsIssued):
            for raw in e.data.commands:
                command = json.loads(raw)
                out.append((f"sent {command['type']}", command["sim_time"], command["data"]))
        elif not left_out(e.data):
            out.append((e.type, e.sim_time, e.data.model_dump(mode="json")))
    return out


async def monitor_run(restart: bool) -> Decisions:
    async with service_stack(1, monitor=True, only=("contention-monitor",)) as stack:
        await given(
            stack,
            host_shape("h1"),
            ClusterCreated(
                cluster="c",
                workers=4,
                min_workers=1,
                max_workers=4,
                priority=Owner.LOW,
                worker_cpu=2,
                worker_mem_mib=4096,
            ),
        )
        await stack.bus.append(
            Envelope.wrap(
                ClusterScaled(cluster="c", from_workers=0, to_workers=4, added=WORKERS),
                producer="tenants",
            )
        )
        await stack.restart("contention-monitor")
        await feed(stack, "contention-monitor", restart)
        return decisions(await stack.events(lambda _: True), "contention-monitor", lambda _: False)


async def test_the_contention_monitor_decides_the_same_with_restarts() -> None:
    without = await monitor_run(restart=False)
    kinds = [t for t, _, _ in without]
    # The scenario is not empty: episodes open and close, a cluster is scaled.
    assert {"ContentionDetected", "ContentionCleared", "ScalingDecided"} <= set(kinds), kinds
    assert await monitor_run(restart=True) == without


async def tenants_run(restart: bool) -> Decisions:
    async with service_stack(1, tenants=True, only=("tenants",)) as stack:
        await given(stack, host_shape("h1"))
        [created] = await stack.client.send_and_wait(
            CreateCluster(cluster="c", workers=4, max_workers=4, worker_cpu=2)
        )
        assert created.type == "ClusterCreated", created
        await given(stack, *(worker_created(vm) for vm in WORKERS))
        [submitted] = await stack.client.send_and_wait(
            SubmitJob(
                cluster="c", job="j", maps=6, reduces=2, map_cpu_seconds=12, reduce_cpu_seconds=9
            )
        )
        assert submitted.type == "JobSubmitted", submitted
        await feed(stack, "tenants", restart)
        return decisions(
            await stack.events(lambda _: True),
            "tenants",
            # Asked of the schedulers before any sample: not what this test is about.
            lambda e: isinstance(e, ClusterCreated | ClusterScaled | JobSubmitted),
        )


async def test_the_job_trackers_decide_the_same_with_restarts() -> None:
    without = await tenants_run(restart=False)
    kinds = [t for t, _, _ in without]
    # Tasks are assigned and finish at different ticks; the job completes.
    assert {"TasksAssigned", "TasksFinished", "JobCompleted"} <= set(kinds), kinds
    assert await tenants_run(restart=True) == without
