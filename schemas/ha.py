"""High availability: hosts declared failed by their silence, and their VMs restarted
elsewhere. Failure is declared by scheduler-high (aggregate ``ha/<host>``, so the hosts'
own aggregates keep their one writer); restarts are done by the hosts service."""

from __future__ import annotations

from datetime import datetime

from pydantic import AwareDatetime, Field

from schemas.base import Command, Event, Name, registry


@registry.register
class HostFailed(Event):
    """A host's telemetry (its heartbeat) stopped: the evidence, and the VMs it held."""

    host: Name
    last_heartbeat_at: AwareDatetime | None = Field(
        description="when its last telemetry was sent (None: none since the detector started)"
    )
    last_tick: int | None = Field(None, ge=0)
    silent_seconds: float = Field(ge=0)
    missed_ticks: int = Field(ge=0)
    vms: list[Name]

    def aggregate(self) -> str:
        return f"ha/{self.host}"


@registry.register
class HostReturned(Event):
    """A host declared failed sends telemetry again: it may take work again. VMs restarted
    elsewhere meanwhile are no longer its (the hosts service fences them off it)."""

    host: Name
    heartbeat_at: AwareDatetime
    tick: int = Field(ge=0)
    down_seconds: float = Field(ge=0)

    def aggregate(self) -> str:
        return f"ha/{self.host}"


@registry.register
class RestartVm(Command):
    """Start a VM of a failed host on ``host`` (memory from its seed), at the size the
    scheduler reserved there."""

    host: Name
    vm: Name
    from_host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=16)
    failed_at: datetime

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmRestarted(Event):
    vm: Name
    host: Name
    from_host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    since_failure_s: float = Field(ge=0, description="wall seconds since HostFailed")

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmRestartFailed(Event):
    """A VM of a failed host that its scheduler could not restart (it tries again when
    the pool changes)."""

    vm: Name
    host: Name
    priority: str
    reason: str

    def aggregate(self) -> str:
        return f"vm/{self.vm}"
