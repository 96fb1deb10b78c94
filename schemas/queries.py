"""Questions answered from projections, and their answers."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Name, Part, Query, Reply, registry
from schemas.host import HostState
from schemas.vm import MemoryMode, Priority, VmState, WorkloadKind


@registry.register
class ListHosts(Query):
    def aggregate(self) -> str:
        return "hosts"


@registry.register
class ListVms(Query):
    def aggregate(self) -> str:
        return "hosts"


class HostView(Part):
    host: Name
    state: HostState
    cpu_cores: int
    cpu_mhz: int
    mem_mib: int
    numa_nodes: int
    mem_reserved_mib: int
    cpu_demand_mhz: int
    cpu_used_mhz: int = 0
    mem_active_mib: float = 0
    mem_balloon_mib: float = 0
    mem_swap_mib: float = 0
    mem_shared_saved_mib: float = 0
    worst_slowdown: float = 1.0
    vms: int = Field(ge=0)
    datastore_capacity_gib: float = 0
    datastore_used_gib: float = 0


class VmView(Part):
    vm: Name
    host: Name
    cpu: int
    mem_mib: int
    priority: Priority
    state: VmState
    workload: WorkloadKind
    memory_mode: MemoryMode
    slowdown: float = 1.0
    cpu_ready_ms: float = 0.0
    disk_gib: int = 0


@registry.register
class HostList(Reply):
    hosts: list[HostView]


@registry.register
class VmList(Reply):
    vms: list[VmView]


@registry.register
class QueryFailed(Reply):
    """The answer when a query could not be answered."""

    reason: str
