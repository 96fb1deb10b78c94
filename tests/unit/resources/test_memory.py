"""Memory overcommit: what a host cannot back is reclaimed by ballooning first, then swap."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.hosts.resources import BALLOON_MAX, HostSpec, Steady, VmSpec, simulate_tick

HOST = HostSpec("h1", cpu_cores=64, cpu_mhz=2_000, mem_mib=16_384)
ALL_ACTIVE = Steady(cpu=0.1, mem=1.0, net_mbps=0.0, storage_mbs=0.0, jitter=0.0)
VM = VmSpec("vm", "h1", vcpus=1, mem_mib=8_192, workload=ALL_ACTIVE)


def vms(count: int) -> list[VmSpec]:
    return [replace(VM, name=f"vm{i}") for i in range(count)]


def test_memory_overcommit_balloons_first_then_swaps() -> None:
    """As overcommit grows, ballooning starts first; swap starts only once balloons are full."""
    limit = BALLOON_MAX * VM.mem_mib
    seen_swap = False
    balloons = []
    for count in range(2, 10):
        result = simulate_tick([HOST], vms(count), 0.0, 20.0)
        host = result.hosts["h1"]
        balloons.append(host.mem_balloon_mib)
        assert host.mem_granted_mib == pytest.approx(min(count * 8_192.0, 16_384.0))
        assert host.mem_balloon_mib + host.mem_swap_mib == pytest.approx(
            host.mem_active_mib - host.mem_granted_mib
        )
        for vm in result.vms.values():
            if vm.mem_swap_mib > 0:
                assert vm.mem_balloon_mib == pytest.approx(limit)
        seen_swap = seen_swap or host.mem_swap_mib > 0
        if not seen_swap:
            assert host.mem_swap_mib == 0.0
    assert balloons[0] == 0.0  # two VMs fit exactly
    assert balloons[1] > 0.0
    assert seen_swap
    assert balloons == sorted(balloons)


def test_balloon_limit_decides_when_swap_starts() -> None:
    """With a smaller balloon limit the same overcommit swaps sooner."""
    generous = simulate_tick([HOST], vms(3), 0.0, 20.0).hosts["h1"]
    stingy = simulate_tick([HOST], vms(3), 0.0, 20.0, balloon_max=0.1).hosts["h1"]
    assert generous.mem_swap_mib == 0.0
    assert stingy.mem_swap_mib > 0.0
    assert stingy.mem_balloon_mib == pytest.approx(3 * 0.1 * VM.mem_mib)


def test_memory_reservation_is_never_reclaimed() -> None:
    """A VM whose active memory is all reserved keeps it; the others give up the difference."""
    reserved = replace(VM, name="db", mem_reservation_mib=8_192.0)
    result = simulate_tick([HOST], [reserved, *vms(3)], 0.0, 20.0)
    db = result.vms["db"]
    assert db.mem_granted_mib == 8_192.0
    assert db.mem_balloon_mib == db.mem_swap_mib == 0.0
    assert db.slowdown == 1.0
    assert result.vms["vm0"].slowdown > 1.0


def test_idle_memory_is_not_needed() -> None:
    """Only active memory counts: VMs configured far beyond the host but mostly idle fit."""
    idle = replace(VM, workload=replace(ALL_ACTIVE, mem=0.1))
    result = simulate_tick([HOST], [replace(idle, name=f"vm{i}") for i in range(8)], 0.0, 20.0)
    assert result.hosts["h1"].mem_balloon_mib == result.hosts["h1"].mem_swap_mib == 0.0
