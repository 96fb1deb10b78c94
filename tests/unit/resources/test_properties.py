"""Properties over random fleets: capacity and demand bound every grant, and the object API
and the vectorised core give the same answer."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.hosts.resources import (
    Bursty,
    DemandArrays,
    Diurnal,
    HadoopWorker,
    HostArrays,
    HostSpec,
    NoisyNeighbour,
    PowerState,
    Steady,
    VmArrays,
    VmSpec,
    contend,
    series,
    simulate_tick,
)

_HOST_COLUMNS = ("cpu_cores", "cpu_mhz", "mem_mib", "net_mbps", "storage_mbs", "storage_gib")
share = st.floats(0.0, 1.0)
seed = st.integers(-(2**63), 2**64)
workloads = st.one_of(
    st.builds(Steady, cpu=share, mem=share, jitter=share, seed=seed),
    st.builds(Bursty, idle_cpu=share, burst_cpu=share, on_s=st.floats(1.0, 100.0), seed=seed),
    st.builds(Diurnal, mean_cpu=share, swing=share, day_s=st.floats(60.0, 1e5), seed=seed),
    st.builds(HadoopWorker, slots=st.integers(0, 16), task_s=st.floats(1.0, 100.0), seed=seed),
    st.builds(NoisyNeighbour, jitter=share, seed=seed),
)
hosts = st.builds(
    HostSpec,
    name=st.just(""),
    cpu_cores=st.integers(1, 8),
    cpu_mhz=st.integers(500, 3_000),
    mem_mib=st.integers(1_024, 32_768),
    net_mbps=st.floats(0.0, 20_000.0),
    storage_mbs=st.floats(0.0, 4_000.0),
)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[HostSpec], list[VmSpec]]:
    specs = draw(st.lists(hosts, min_size=1, max_size=3))
    named = [replace(h, name=f"h{i}") for i, h in enumerate(specs)]
    vms = []
    for i in range(draw(st.integers(0, 8))):
        mem = draw(st.integers(1, 16_384))
        vms.append(
            VmSpec(
                name=f"vm{i}",
                host=draw(st.sampled_from(named)).name,
                vcpus=draw(st.integers(1, 8)),
                mem_mib=mem,
                workload=draw(workloads),
                power=draw(st.sampled_from(PowerState)),
                cpu_cap=draw(share),
                shares=draw(st.one_of(st.none(), st.integers(1, 10_000))),
                cpu_reservation_mhz=draw(st.floats(0.0, 5_000.0)),
                mem_reservation_mib=draw(st.floats(0.0, float(mem))),
            )
        )
    return named, vms


def column(values: list[float]) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    return np.array(values, dtype=np.float64)


@settings(max_examples=80, deadline=None)
@given(fleet=fleets(), sim_time=st.floats(0.0, 1e6), shuffle=st.integers(0, 2**32 - 1))
def test_object_api_agrees_with_the_vectorised_core(
    fleet: tuple[list[HostSpec], list[VmSpec]], sim_time: float, shuffle: int
) -> None:
    """simulate_tick equals contend on hand-built arrays with hosts and VMs in another order."""
    host_specs, vm_specs = fleet
    by_api = simulate_tick(host_specs, vm_specs, sim_time, 10.0)

    rng = np.random.default_rng(shuffle)
    host_order = [host_specs[i] for i in rng.permutation(len(host_specs))]
    vm_order = [vm_specs[i] for i in rng.permutation(len(vm_specs))]
    row = {h.name: i for i, h in enumerate(host_order)}
    arrays = HostArrays(*(column([getattr(h, n) for h in host_order]) for n in _HOST_COLUMNS))
    vms = VmArrays(
        host=np.array([row[v.host] for v in vm_order], dtype=np.intp),
        vcpus=column([v.vcpus for v in vm_order]),
        mem_mib=column([v.mem_mib for v in vm_order]),
        shares=column([v.shares or 1_000 * v.vcpus for v in vm_order]),
        cpu_reservation_mhz=column([v.cpu_reservation_mhz for v in vm_order]),
        mem_reservation_mib=column([v.mem_reservation_mib for v in vm_order]),
        cpu_cap=column([v.cpu_cap for v in vm_order]),
        running=np.array([v.power is PowerState.ON for v in vm_order], dtype=np.bool_),
        disk_gib=column([v.disk_gib for v in vm_order]),
    )
    one_by_one = [series(v.workload, np.array([sim_time]), v.vcpus, v.mem_mib) for v in vm_order]
    demand = DemandArrays(
        *(column([float(getattr(d, f.name)[0]) for d in one_by_one]) for f in fields(DemandArrays))
    )
    usage = contend(arrays, vms, demand, 10.0)

    for i, v in enumerate(vm_order):
        got = by_api.vms[v.name]
        for f in fields(usage.vms):
            assert getattr(got, f.name) == pytest.approx(
                float(getattr(usage.vms, f.name)[i]), rel=1e-9, abs=1e-6
            ), f.name
    for h in host_order:
        got_host = by_api.hosts[h.name]
        for f in fields(usage.hosts):
            assert getattr(got_host, f.name) == pytest.approx(
                float(getattr(usage.hosts, f.name)[row[h.name]]), rel=1e-9, abs=1e-6
            ), f.name


@settings(max_examples=80, deadline=None)
@given(fleet=fleets(), sim_time=st.floats(0.0, 1e6))
def test_grants_stay_within_capacity_and_demand_and_slowdown_is_at_least_one(
    fleet: tuple[list[HostSpec], list[VmSpec]], sim_time: float
) -> None:
    """For random fleets: per-host grants <= capacity, each grant <= demand, slowdown >= 1."""
    host_specs, vm_specs = fleet
    result = simulate_tick(host_specs, vm_specs, sim_time, 10.0)
    slack = 1 + 1e-9
    for h in host_specs:
        total = result.hosts[h.name]
        assert total.cpu_used_mhz <= total.cpu_capacity_mhz * slack + 1e-6
        assert total.mem_granted_mib <= total.mem_capacity_mib * slack + 1e-6
        assert total.net_tx_mbps <= total.net_capacity_mbps * slack + 1e-6
        assert total.net_rx_mbps <= total.net_capacity_mbps * slack + 1e-6
        storage = total.storage_read_mbs + total.storage_write_mbs
        assert storage <= total.storage_capacity_mbs * slack + 1e-6
    core_mhz = {h.name: h.cpu_mhz for h in host_specs}
    for spec in vm_specs:
        vm = result.vms[spec.name]
        assert 0.0 <= vm.cpu_used_mhz <= vm.cpu_demand_mhz
        assert vm.cpu_used_mhz <= spec.cpu_cap * spec.vcpus * core_mhz[spec.host] * slack
        reserved = spec.mem_reservation_mib if spec.power is PowerState.ON else 0.0
        need = max(vm.mem_active_mib, reserved)
        assert 0.0 <= vm.mem_granted_mib <= need
        assert vm.mem_granted_mib + vm.mem_balloon_mib + vm.mem_swap_mib == pytest.approx(need)
        want = series(spec.workload, np.array([sim_time]), spec.vcpus, spec.mem_mib)
        assert vm.net_tx_mbps <= float(want.net_tx_mbps[0])
        assert vm.net_rx_mbps <= float(want.net_rx_mbps[0])
        assert vm.storage_read_mbs <= float(want.storage_read_mbs[0]) * slack
        assert vm.storage_write_mbs <= float(want.storage_write_mbs[0]) * slack
        assert vm.mem_balloon_mib >= 0.0
        assert vm.mem_swap_mib >= 0.0
        assert vm.cpu_ready_ms >= vm.cpu_maxlimited_ms >= 0.0
        assert 0.0 <= vm.cpu_latency_pct <= 100.0 * slack
        assert vm.slowdown >= 1.0
        assert np.isfinite(vm.slowdown)
