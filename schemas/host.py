"""Emulated hypervisor hosts: their registration and telemetry."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Event, Name, Telemetry, registry


@registry.register
class HostRegistered(Event):
    host: Name
    cpu_cores: int = Field(ge=1)
    cpu_mhz: int = Field(ge=1)
    mem_mib: int = Field(ge=1)

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class HostTelemetry(Telemetry):
    host: Name
    tick: int = Field(ge=0)
    cpu_capacity_mhz: int = Field(ge=0)
    cpu_demand_mhz: int = Field(ge=0)
    cpu_used_mhz: int = Field(ge=0)
    mem_capacity_mib: int = Field(ge=0)
    mem_reserved_mib: int = Field(ge=0)
    vms_running: int = Field(ge=0)
    vms_total: int = Field(ge=0)

    def aggregate(self) -> str:
        return f"host/{self.host}"
