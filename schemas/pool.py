"""The shared resource pool as a ledger: reservations per host, appended with versions."""

from __future__ import annotations

import enum
import math

from pydantic import Field

from schemas.base import Event, Name, registry


class Owner(enum.StrEnum):
    HIGH = "high"
    LOW = "low"


# What one vCPU reserves: the unit schedulers reserve in and hosts size VMs by.
MHZ_PER_VCPU = 1000.0


def vcpus_covered(cpu_mhz: float) -> int:
    """The vCPUs a reservation of ``cpu_mhz`` runs: a VM placed with less than one vCPU's
    worth (degraded) still runs one."""
    return max(1, math.floor(cpu_mhz / MHZ_PER_VCPU + 1e-9))


@registry.register
class CapacityReserved(Event):
    """Capacity on a host set aside for a workload; appended at the host's pool version,
    so two schedulers reserving on one host at once cannot both win."""

    host: Name
    reservation: Name
    workload: Name
    owner: Owner
    purpose: str = Field(
        "vm", pattern=r"^[a-z][a-z-]{0,31}$", description="vm, migration, copy or ha"
    )
    cpu_mhz: float = Field(ge=0)
    mem_mib: float = Field(ge=0)
    net_mbps: float = Field(0, ge=0)
    storage_mbs: float = Field(0, ge=0)
    # A reservation on the same host that this one takes the place of, in the same step
    # (a migrated VM's own reservation replaces the migration's incoming one).
    replaces: Name | None = None

    def aggregate(self) -> str:
        return f"pool/{self.host}"


@registry.register
class CapacityReleased(Event):
    host: Name
    reservation: Name

    def aggregate(self) -> str:
        return f"pool/{self.host}"
