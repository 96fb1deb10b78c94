"""Placement requests to the two priority schedulers, and how they answer."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Command, Event, Name, Part, registry
from schemas.pool import Owner
from schemas.vm import MemoryMode, WorkloadKind


@registry.register
class PlaceVm(Command):
    """Find a host for a VM of the scheduler's priority; it then asks that host to create it."""

    vm: Name
    priority: Owner
    cpu: int = Field(ge=1, le=256)
    mem_mib: int = Field(ge=16, le=4 * 1024 * 1024)
    min_cpu: int | None = Field(None, ge=1, description="degraded placement: never below")
    min_mem_mib: int | None = Field(None, ge=16)
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    seed: int = Field(0, ge=0)

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


class Candidate(Part):
    host: Name
    score: float


@registry.register
class VmPlaced(Event):
    """Where a VM went and why: the chosen host, the runners-up, what each filter removed."""

    vm: Name
    host: Name
    priority: Owner
    round: int = Field(ge=0)
    cpu: int
    mem_mib: int
    degraded: bool = False
    score: float
    runners_up: list[Candidate] = Field(default_factory=list)
    filtered: dict[str, int] = Field(default_factory=dict)
    conflicts: int = Field(0, ge=0, description="reservations lost to the other scheduler")

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class RoundCompleted(Event):
    """A scheduler finished its round: the low one starts only after the high one's."""

    priority: Owner
    round: int = Field(ge=0)
    placed: int = Field(ge=0)
    unplaced: int = Field(ge=0)
    without_high: bool = Field(False, description="low went ahead: high did not finish in time")

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


@registry.register
class PlacementRequested(Event):
    """A PlaceVm accepted into its scheduler's queue; it is placed in the next round."""

    vm: Name
    priority: Owner
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=16)
    min_cpu: int | None = None
    min_mem_mib: int | None = None
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    seed: int = 0

    def aggregate(self) -> str:
        return f"vm/{self.vm}"
