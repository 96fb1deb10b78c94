"""Host and VM descriptions: NUMA split, defaults, and what the model refuses."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.hosts.resources import (
    HostSpec,
    NumaNode,
    ResourceModelError,
    VmSpec,
    simulate_tick,
)

HOST = HostSpec("h1", cpu_cores=10, cpu_mhz=2_000, mem_mib=10_001, numa_nodes=4)


def test_numa_nodes_split_cores_and_memory_and_add_up_to_the_host() -> None:
    """Cores and memory spread over NUMA nodes as evenly as whole units allow."""
    nodes = HOST.numa_split()
    assert nodes == (
        NumaNode(cores=3, mem_mib=2_501),
        NumaNode(cores=3, mem_mib=2_500),
        NumaNode(cores=2, mem_mib=2_500),
        NumaNode(cores=2, mem_mib=2_500),
    )
    assert sum(n.cores for n in nodes) == HOST.cpu_cores
    assert sum(n.mem_mib for n in nodes) == HOST.mem_mib


def test_cpu_shares_default_to_a_thousand_per_vcpu() -> None:
    """Without explicit shares a VM weighs 1,000 per vCPU, as vSphere's "normal"."""
    assert VmSpec("a", "h1", vcpus=3, mem_mib=1).cpu_shares == 3_000
    assert VmSpec("a", "h1", vcpus=3, mem_mib=1, shares=7).cpu_shares == 7


@pytest.mark.parametrize(
    "build",
    [
        lambda: HostSpec("h", cpu_cores=0, cpu_mhz=1, mem_mib=1),
        lambda: HostSpec("h", cpu_cores=2, cpu_mhz=1, mem_mib=1024, numa_nodes=3),
        lambda: HostSpec("h", cpu_cores=2, cpu_mhz=1, mem_mib=1024, net_mbps=-1.0),
        lambda: VmSpec("a", "h", vcpus=0, mem_mib=1),
        lambda: VmSpec("a", "h", vcpus=1, mem_mib=1, cpu_cap=1.5),
        lambda: VmSpec("a", "h", vcpus=1, mem_mib=1, shares=0),
        lambda: VmSpec("a", "h", vcpus=1, mem_mib=100, mem_reservation_mib=101.0),
        lambda: VmSpec("a", "h", vcpus=1, mem_mib=100, cpu_reservation_mhz=-1.0),
    ],
    ids=[
        "no-cores",
        "more-numa-nodes-than-cores",
        "negative-network",
        "no-vcpus",
        "cap-above-one",
        "zero-shares",
        "reservation-above-size",
        "negative-reservation",
    ],
)
def test_impossible_specs_are_refused(build: Callable[[], object]) -> None:
    """A description the model cannot use raises the package's one error type."""
    with pytest.raises(ResourceModelError):
        build()


def test_tick_refuses_vms_on_unknown_hosts_and_duplicate_names() -> None:
    """simulate_tick names the unknown host, and refuses two VMs or hosts of one name."""
    vm = VmSpec("a", "h1", vcpus=1, mem_mib=1)
    with pytest.raises(ResourceModelError, match="h9"):
        simulate_tick([HOST], [VmSpec("a", "h9", vcpus=1, mem_mib=1)], 0.0, 1.0)
    with pytest.raises(ResourceModelError, match="VM names"):
        simulate_tick([HOST], [vm, vm], 0.0, 1.0)
    with pytest.raises(ResourceModelError, match="host names"):
        simulate_tick([HOST, HOST], [vm], 0.0, 1.0)
    with pytest.raises(ResourceModelError, match="tick"):
        simulate_tick([HOST], [vm], 0.0, 0.0)
