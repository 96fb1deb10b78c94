"""Which clusters shrink under contention, never below their minimum, and when they grow back."""

from __future__ import annotations

from schemas.contention import Direction, Evidence, ScalingDecided
from schemas.host import HostTelemetry, VmSample
from schemas.pool import Owner
from schemas.tenants import ClusterCreated, ClusterScaled
from services.contention.scaling import scale_down, scale_up
from services.contention.state import Monitor, evolve

WHY = Evidence(ticks=2, slowdown=2.0, cpu_ready_ms=900, demand_ratio=1.6)


def monitor(*clusters: tuple[str, Owner, int, int]) -> Monitor:
    """(name, priority, workers, minimum); every worker is on h1."""
    m = Monitor()
    for name, prio, workers, minimum in clusters:
        m = evolve(
            m,
            ClusterCreated(
                cluster=name,
                workers=workers,
                min_workers=minimum,
                max_workers=workers,
                priority=prio,
                worker_cpu=4,
                worker_mem_mib=4096,
            ),
        )
        added = [f"{name}-w{i}" for i in range(workers)]
        m = evolve(m, ClusterScaled(cluster=name, from_workers=0, to_workers=workers, added=added))
    return m


def sample(
    m: Monitor, demand: float = 8000, extra: float = 30_000, cap: int = 38_400
) -> HostTelemetry:
    vms = [
        VmSample(
            vm=vm,
            state="on",
            cpu_demand_mhz=demand,
            cpu_used_mhz=demand / 2,
            cpu_ready_ms=900,
            cpu_latency_pct=50,
            mem_active_mib=1,
            mem_balloon_mib=0,
            mem_swap_mib=0,
            net_tx_mbps=0,
            net_rx_mbps=0,
            storage_read_mbs=0,
            storage_write_mbs=0,
            slowdown=2.0,
        )
        for vm in m.owner
    ]
    total = demand * len(vms) + extra
    return HostTelemetry(
        host="h1",
        tick=5,
        cpu_capacity_mhz=cap,
        cpu_demand_mhz=int(total),
        cpu_used_mhz=cap,
        mem_capacity_mib=65536,
        mem_reserved_mib=0,
        vms_running=len(vms),
        vms_total=len(vms),
        vms=vms,
    )


def test_the_lowest_priority_gives_first_and_never_below_its_minimum() -> None:
    m = monitor(("gold", Owner.HIGH, 3, 1), ("batch", Owner.LOW, 4, 3))
    plan = scale_down(m, sample(m), "h1-t5", WHY)
    # batch may lose only 1 (4 workers, minimum 3); gold is protected while batch gives.
    assert [(s.cluster, s.delta) for s in plan] == [("batch", -1)]


def test_a_higher_priority_gives_only_when_no_lower_one_can() -> None:
    m = monitor(("gold", Owner.HIGH, 3, 1), ("batch", Owner.LOW, 2, 2))
    plan = scale_down(m, sample(m), "h1-t5", WHY)
    assert [(s.cluster, s.delta) for s in plan] == [("gold", -2)]


def test_no_cluster_at_its_minimum_gives_anything() -> None:
    m = monitor(("batch", Owner.LOW, 2, 2))
    assert scale_down(m, sample(m), "h1-t5", WHY) == []


def test_a_decision_is_taken_once_per_episode() -> None:
    m = monitor(("batch", Owner.LOW, 4, 1))
    [s] = scale_down(m, sample(m), "h1-t5", WHY)
    m = evolve(
        m,
        ScalingDecided(
            host="h1",
            episode="h1-t5",
            cluster="batch",
            direction=Direction.DOWN,
            delta=s.delta,
            reason="",
        ),
    )
    assert scale_down(m, sample(m), "h1-t5", WHY) == []


def test_workers_come_back_once_the_host_has_room() -> None:
    m = monitor(("batch", Owner.LOW, 4, 1))
    m = evolve(
        m,
        ClusterScaled(
            cluster="batch", from_workers=4, to_workers=2, removed=["batch-w2", "batch-w3"]
        ),
    )
    m = evolve(
        m,
        ScalingDecided(
            host="h1",
            episode="h1-t5",
            cluster="batch",
            direction=Direction.DOWN,
            delta=-2,
            reason="",
        ),
    )
    busy = sample(m, demand=8000, extra=20_000)
    assert scale_up(m, busy) == []  # 36 GHz demand: no room for 8 GHz more
    calm = sample(m, demand=2000, extra=0)
    [(episode, s)] = scale_up(m, calm)
    assert (episode, s.cluster, s.direction, s.delta) == ("h1-t5", "batch", Direction.UP, 2)
    m = evolve(
        m,
        ScalingDecided(
            host="h1", episode="h1-t5", cluster="batch", direction=Direction.UP, delta=2, reason=""
        ),
    )
    assert scale_up(m, calm) == []
