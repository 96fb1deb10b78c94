"""Questions answered from projections, and their answers."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Name, Query, Reply, registry
from schemas.vm import Priority, VmState


@registry.register
class ListHosts(Query):
    def aggregate(self) -> str:
        return "hosts"


@registry.register
class ListVms(Query):
    def aggregate(self) -> str:
        return "hosts"


class HostView(Reply):
    host: Name
    cpu_cores: int
    cpu_mhz: int
    mem_mib: int
    mem_reserved_mib: int
    cpu_demand_mhz: int
    vms: int = Field(ge=0)


class VmView(Reply):
    vm: Name
    host: Name
    cpu: int
    mem_mib: int
    priority: Priority
    state: VmState


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
