"""What a host has and what a VM asks for: the static inputs of the resource model."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from services.hosts.resources.errors import ResourceModelError
from services.hosts.resources.profiles import Steady, Workload

# vSphere's default ("normal") CPU shares per vCPU.
SHARES_PER_VCPU = 1000


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    SUSPENDED = "suspended"


@dataclass(frozen=True, slots=True)
class NumaNode:
    cores: int
    mem_mib: int


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A host's capacity: CPU (cores x MHz each), memory, network, storage throughput and space."""

    name: str
    cpu_cores: int
    cpu_mhz: int
    mem_mib: int
    net_mbps: float = 10_000.0
    storage_mbs: float = 2_000.0
    storage_gib: float = 10_240.0
    numa_nodes: int = 1

    def __post_init__(self) -> None:
        if min(self.cpu_cores, self.cpu_mhz, self.mem_mib, self.numa_nodes) < 1:
            raise ResourceModelError(f"host {self.name}: cores, MHz, memory and NUMA nodes >= 1")
        if min(self.net_mbps, self.storage_mbs, self.storage_gib) < 0:
            raise ResourceModelError(f"host {self.name}: negative network or storage capacity")
        if self.numa_nodes > min(self.cpu_cores, self.mem_mib):
            raise ResourceModelError(
                f"host {self.name}: {self.numa_nodes} NUMA nodes need a core and a MiB each"
            )

    @property
    def cpu_capacity_mhz(self) -> int:
        return self.cpu_cores * self.cpu_mhz

    def numa_split(self) -> tuple[NumaNode, ...]:
        """Cores and memory spread over the NUMA nodes as evenly as whole units allow; the
        first nodes take the remainder, so the nodes always add up to the host."""
        n = self.numa_nodes
        return tuple(
            NumaNode(
                cores=self.cpu_cores // n + (i < self.cpu_cores % n),
                mem_mib=self.mem_mib // n + (i < self.mem_mib % n),
            )
            for i in range(n)
        )


@dataclass(frozen=True, slots=True)
class VmSpec:
    """A VM's size, reservations, shares, workload and the run-time knobs (power, CPU cap).

    ``cpu_cap`` caps the CPU grant at that fraction of the VM's full vCPU capacity
    (vCPUs x the host's core MHz): live migration throttles a VM this way to converge.
    ``shares`` weigh CPU, network and storage; memory is weighed by configured size.
    """

    name: str
    host: str
    vcpus: int
    mem_mib: int
    workload: Workload = field(default_factory=Steady)
    power: PowerState = PowerState.ON
    cpu_cap: float = 1.0
    shares: int | None = None
    cpu_reservation_mhz: float = 0.0
    mem_reservation_mib: float = 0.0
    disk_gib: float = 0.0

    def __post_init__(self) -> None:
        if self.vcpus < 1 or self.mem_mib < 1:
            raise ResourceModelError(f"VM {self.name}: needs at least one vCPU and one MiB")
        if not 0.0 <= self.cpu_cap <= 1.0:
            raise ResourceModelError(f"VM {self.name}: cpu_cap {self.cpu_cap} is not in [0, 1]")
        if self.shares is not None and self.shares < 1:
            raise ResourceModelError(f"VM {self.name}: shares must be positive")
        if min(self.cpu_reservation_mhz, self.mem_reservation_mib, self.disk_gib) < 0:
            raise ResourceModelError(f"VM {self.name}: negative reservation or disk")
        if self.mem_reservation_mib > self.mem_mib:
            raise ResourceModelError(f"VM {self.name}: reserves more memory than it has")

    @property
    def cpu_shares(self) -> int:
        return self.shares if self.shares is not None else SHARES_PER_VCPU * self.vcpus
