"""Contention on a host: grants, slowdown and CPU counters through the object API."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.hosts.resources import (
    HadoopWorker,
    HostSpec,
    NoisyNeighbour,
    PowerState,
    Steady,
    VmSpec,
    simulate_tick,
)

SMALL = HostSpec("h1", cpu_cores=2, cpu_mhz=2_000, mem_mib=16_384, net_mbps=1_000, storage_mbs=200)
QUIET = Steady(cpu=0.5, mem=0.25, net_mbps=100.0, storage_mbs=50.0, jitter=0.0)
TICK_S = 20.0


WEB = VmSpec("web", "h1", vcpus=2, mem_mib=4_096, workload=QUIET)
NOISY = VmSpec("noisy", "h1", vcpus=4, mem_mib=4_096, workload=NoisyNeighbour(seed=3))


def test_noisy_neighbour_slows_a_steady_vm_until_it_is_powered_off() -> None:
    """Beside a noisy neighbour a steady VM waits for CPU; with the neighbour off it runs freely."""
    crowded = simulate_tick([SMALL], [WEB, NOISY], 60.0, TICK_S).vms["web"]
    assert crowded.slowdown > 1.0
    assert crowded.cpu_ready_ms > 0.0
    assert crowded.cpu_latency_pct > 0.0

    vms = [WEB, replace(NOISY, power=PowerState.OFF)]
    alone = simulate_tick([SMALL], vms, 60.0, TICK_S).vms["web"]
    assert alone.slowdown == 1.0
    assert alone.cpu_ready_ms == 0.0
    assert alone.cpu_used_mhz == alone.cpu_demand_mhz == 2_000.0


def test_noisy_neighbour_saturates_cpu_network_and_storage() -> None:
    """A noisy neighbour alone on a host uses all its CPU, network and storage throughput."""
    host = simulate_tick([SMALL], [NOISY], 0.0, TICK_S).hosts["h1"]
    assert host.cpu_used_mhz == pytest.approx(host.cpu_capacity_mhz)
    assert host.net_tx_mbps == pytest.approx(host.net_capacity_mbps)
    assert host.net_rx_mbps == pytest.approx(host.net_capacity_mbps)
    assert host.storage_read_mbs + host.storage_write_mbs == pytest.approx(200.0)


def test_everyone_gets_their_demand_when_it_fits() -> None:
    """With room for all demand, every VM is granted its demand and nothing waits."""
    big = replace(SMALL, cpu_cores=16, net_mbps=10_000, storage_mbs=2_000)
    vms = [
        replace(WEB, name="a"),
        replace(WEB, name="b"),
        replace(WEB, name="c", workload=HadoopWorker()),
    ]
    result = simulate_tick([big], vms, 1_000.0, TICK_S)
    for vm in result.vms.values():
        assert vm.cpu_used_mhz == vm.cpu_demand_mhz
        assert vm.cpu_ready_ms == 0.0
        assert vm.mem_granted_mib == vm.mem_active_mib
        assert vm.mem_balloon_mib == vm.mem_swap_mib == 0.0
        assert vm.slowdown == 1.0


def test_grants_never_exceed_capacity_for_any_resource() -> None:
    """Under overload on every resource, host totals stay within each capacity."""
    vms = [replace(NOISY, name=f"n{i}", mem_mib=8_192) for i in range(4)]
    host = simulate_tick([SMALL], vms, 5.0, TICK_S).hosts["h1"]
    assert host.cpu_demand_mhz > host.cpu_capacity_mhz
    assert host.cpu_used_mhz <= host.cpu_capacity_mhz * (1 + 1e-9)
    assert host.mem_granted_mib <= host.mem_capacity_mib * (1 + 1e-9)
    assert host.net_tx_mbps <= host.net_capacity_mbps * (1 + 1e-9)
    assert host.net_rx_mbps <= host.net_capacity_mbps * (1 + 1e-9)
    storage = host.storage_read_mbs + host.storage_write_mbs
    assert storage <= host.storage_capacity_mbs * (1 + 1e-9)


def test_cpu_reservation_is_honoured_before_shares() -> None:
    """A VM's CPU reservation is granted in full even against a neighbour with more shares."""
    vms = [
        replace(WEB, workload=NoisyNeighbour(), cpu_reservation_mhz=3_000.0),
        replace(NOISY, shares=100_000),
    ]
    web = simulate_tick([SMALL], vms, 0.0, TICK_S).vms["web"]
    assert web.cpu_used_mhz == pytest.approx(3_000.0)


def test_cpu_ready_is_the_vcpu_time_spent_waiting() -> None:
    """Two busy 2-vCPU VMs on 2 cores each wait one vCPU's worth: ready = tick, latency = 50 %."""
    busy = Steady(cpu=1.0, mem=0.1, net_mbps=0.0, storage_mbs=0.0, jitter=0.0)
    vms = [replace(WEB, name="a", workload=busy), replace(WEB, name="b", workload=busy)]
    a = simulate_tick([SMALL], vms, 0.0, TICK_S).vms["a"]
    assert a.cpu_used_mhz == pytest.approx(2_000.0)
    assert a.slowdown == pytest.approx(2.0)
    assert a.cpu_ready_ms == pytest.approx(TICK_S * 1_000.0)
    assert a.cpu_latency_pct == pytest.approx(50.0)
    assert a.counters()["cpu.ready"] == a.cpu_ready_ms


def test_cpu_cap_throttles_the_cpu_grant() -> None:
    """A VM capped at 25 % of its vCPUs gets no more, even on an idle host, and reports it."""
    vm = replace(WEB, workload=replace(QUIET, cpu=1.0), cpu_cap=0.25)
    big = replace(SMALL, cpu_cores=16)
    tick = simulate_tick([big], [vm], 0.0, TICK_S).vms["web"]
    assert tick.cpu_demand_mhz == pytest.approx(4_000.0)
    assert tick.cpu_used_mhz == pytest.approx(1_000.0)
    assert tick.slowdown == pytest.approx(4.0)
    assert tick.cpu_maxlimited_ms == pytest.approx(tick.cpu_ready_ms)
    assert tick.cpu_ready_ms == pytest.approx(1.5 * TICK_S * 1_000.0)


def test_powered_off_and_suspended_vms_demand_nothing() -> None:
    """Off and suspended VMs get and want nothing, and their reservations stop counting."""
    vms = [
        replace(NOISY, name="off", power=PowerState.OFF, cpu_reservation_mhz=4_000.0),
        replace(NOISY, name="asleep", power=PowerState.SUSPENDED, mem_reservation_mib=4_096.0),
        replace(WEB, disk_gib=40.0),
    ]
    result = simulate_tick([SMALL], vms, 0.0, TICK_S)
    for name in ("off", "asleep"):
        assert all(v == 0.0 for k, v in result.vms[name].counters().items() if k != "slowdown")
        assert result.vms[name].slowdown == 1.0
    assert result.vms["web"].slowdown == 1.0
    assert result.hosts["h1"].vms_running == 1
    assert result.hosts["h1"].storage_provisioned_gib == 40.0
