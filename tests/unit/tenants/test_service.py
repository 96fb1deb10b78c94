"""Tenant clusters, the contention monitor and the hosts together on the in-memory bus:
contention shrinks the low-priority cluster on the contended host, never below its
minimum; it grows back once the contention clears; bad telemetry is dead-lettered."""

from __future__ import annotations

from typing import Any

from schemas import Envelope
from schemas.host import HostTelemetry
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.tenants import ClusterScaled, CreateCluster, SubmitJob
from schemas.vm import PowerOffVm, WorkloadKind
from shared.testing import poll
from tests.unit.stack import Stack, memory_stack

FAST: dict[str, Any] = {
    "ha_failures": 0,
    "tick_seconds": 0.1,
    "speed": 10.0,
    "rebalance_threshold": 1.0,
}


async def types(stack: Stack, *names: str) -> list[str]:
    return [e.type for e in await stack.of_type(*names)]


async def test_contention_shrinks_the_low_cluster_then_it_grows_back() -> None:
    async with memory_stack(hosts=2, tenants=True, monitor=True, **FAST) as stack:
        c = stack.client
        await c.send(
            CreateCluster(
                cluster="gold", workers=2, max_workers=2, worker_cpu=4, priority=Owner.HIGH
            )
        )
        await c.send(
            CreateCluster(cluster="batch", workers=4, min_workers=3, max_workers=4, worker_cpu=4)
        )
        created = await poll(
            lambda: stack.of_type("VmCreated"), lambda es: len(es) == 6, what="workers"
        )
        on_h1 = [e.data.vm for e in created if e.data.host == "h1"]  # type: ignore[attr-defined]
        await c.send(SubmitJob(cluster="batch", job="b", maps=400, map_cpu_seconds=5))
        on_h1_only = PlacementRules(host_affinity=Affinity(must=["h1"]))
        await c.send(
            PlaceVm(
                vm="noisy",
                priority=Owner.LOW,
                cpu=24,  # within h1's reservable 38,400 MHz, far over its cores
                mem_mib=2048,
                workload=WorkloadKind.NOISY,
                rules=on_h1_only,
            )
        )

        [detected] = await poll(
            lambda: stack.of_type("ContentionDetected"), lambda es: len(es) == 1, what="detected"
        )
        assert detected.data.host == "h1"  # type: ignore[attr-defined]
        [down] = await poll(
            lambda: stack.of_type("ScalingDecided"), lambda es: len(es) >= 1, what="scaling"
        )
        assert down.data.cluster == "batch"  # type: ignore[attr-defined]
        # batch has 4 workers and a minimum of 3: it gives one, whatever the contention.
        assert down.data.delta == -1  # type: ignore[attr-defined]
        [shrunk] = await poll(
            lambda: stack.events(
                lambda e: isinstance(e.data, ClusterScaled) and "contention" in e.data.reason
            ),
            lambda es: len(es) == 1,
            what="shrunk",
        )
        assert shrunk.data.to_workers == 3  # type: ignore[attr-defined]
        # The log tells the cause before the effect: the decision, then the scaling.
        ids = [e.id for e in await stack.of_type("ScalingDecided", "ClusterScaled")]
        assert ids.index(down.id) < ids.index(shrunk.id)
        assert set(shrunk.data.removed) <= set(on_h1)  # type: ignore[attr-defined]
        await poll(lambda: stack.of_type("VmDestroyed"), lambda es: len(es) == 1, what="destroyed")
        # Workers slowed on h1 get fewer slots than vCPUs (test_tracker: the tracker keeps to them).
        allocated = await poll(
            lambda: stack.of_type("SlotsAllocated"),
            lambda es: any(
                a.vm in on_h1 and a.map_slots < 4
                for e in es
                for a in e.data.slots  # type: ignore[attr-defined]
            ),
            what="fewer slots on h1",
        )
        assert all(e.producer == "tenants" for e in allocated)

        await c.send(PowerOffVm(vm="noisy", host="h1"))
        await poll(
            lambda: stack.of_type("ContentionCleared"), lambda es: len(es) == 1, what="cleared"
        )
        decided = await poll(
            lambda: stack.of_type("ScalingDecided"), lambda es: len(es) == 2, what="scale up"
        )
        up = decided[1].data
        assert (up.cluster, up.direction, up.delta) == ("batch", "up", 1)  # type: ignore[attr-defined]
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 8, what="worker back")
        # One episode, one decision each way: nothing repeated tick after tick.
        assert await types(stack, "ContentionDetected", "ContentionCleared") == [
            "ContentionDetected",
            "ContentionCleared",
        ]


FAR = 1e9


async def test_bad_telemetry_is_dead_lettered_and_changes_nothing() -> None:
    async with memory_stack(hosts=1, tenants=True, monitor=True, **FAST) as stack:
        good = HostTelemetry(
            host="h1",
            tick=1,
            cpu_capacity_mhz=1,
            cpu_demand_mhz=10,
            cpu_used_mhz=1,
            mem_capacity_mib=1,
            mem_reserved_mib=0,
            vms_running=0,
            vms_total=0,
        )
        stranger = good.model_copy(update={"host": "h9"})
        disguised = Envelope.wrap(good, producer="test", subject="host/h2", sim_time=FAR)
        await stack.bus.emit(Envelope.wrap(stranger, producer="test", sim_time=FAR))
        await stack.bus.emit(disguised)
        dead = await poll(
            lambda: stack.bus.dead_letters("contention-monitor-telemetry"),
            lambda d: len(d) == 2,
            what="dead letters",
        )
        reasons = sorted(d.reason for d in dead)
        assert reasons == [
            "poison: a sample of host h1 sent as host/h2",
            "poison: telemetry from unknown host h9",
        ]
        assert await stack.of_type("ContentionDetected", "ScalingDecided") == []
        # Refused as bad input, their emulated time (far ahead) moved no service's clock.
        refused = await poll(
            lambda: stack.bus.dead_letters("tenants-telemetry"),
            lambda d: len(d) == 2,
            what="the tenants' dead letters",
        )
        assert sorted(d.reason for d in refused) == reasons
        for service in ("contention-monitor", "tenants", "scheduler-high"):
            assert stack.running[service].runtime.definition.clock.now() < FAR, service


async def test_a_job_spills_to_scratch_and_gives_it_back_when_done() -> None:
    async with memory_stack(hosts=1, tenants=True, **FAST) as stack:
        c = stack.client
        await c.send(CreateCluster(cluster="t", workers=2, max_workers=2, worker_cpu=2))
        await poll(lambda: stack.of_type("VmCreated"), lambda es: len(es) == 2, what="workers")
        await c.send(
            SubmitJob(
                cluster="t",
                job="sort",
                maps=6,
                reduces=1,
                map_cpu_seconds=2,
                scratch_mib_per_map=100,
            )
        )
        await poll(lambda: stack.of_type("JobCompleted"), lambda es: len(es) == 1, what="done")
        allocated = await poll(
            lambda: stack.of_type("ScratchAllocated"), lambda es: len(es) == 6, what="spills"
        )
        assert {e.data.vm for e in allocated} == {"t-w0", "t-w1"}  # type: ignore[attr-defined]
        released = await poll(
            lambda: stack.of_type("ScratchReleased"), lambda es: len(es) == 2, what="given back"
        )
        assert sum(e.data.mib for e in released) == 600  # type: ignore[attr-defined]
        assert released[-1].data.pool_used_mib == 0  # type: ignore[attr-defined]
