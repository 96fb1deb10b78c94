"""Work for the two priority schedulers (VMs, migrations, file copies, maintenance),
and how they answer."""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, Part, registry
from schemas.pool import Owner
from schemas.transfers import DEFAULT_DOWNTIME_MS, MAX_DOWNTIME_MS, MigrationMode
from schemas.vm import (
    DEFAULT_DISK_GIB,
    MAX_DISK_GIB,
    GuestInputs,
    GuestWrites,
    MemoryMode,
    WorkloadKind,
)


class PlacementPolicy(enum.StrEnum):
    BALANCED = "balanced"  # the least loaded host after placement
    BINPACK = "binpack"  # the most loaded host that still fits
    SPREAD = "spread"  # the host with the fewest VMs of the same group


class Affinity(Part):
    """``must`` names filter hosts; ``should`` names only weigh in the score."""

    must: list[Name] = Field(default_factory=list, max_length=64)
    should: list[Name] = Field(default_factory=list, max_length=64)

    def names(self) -> set[str]:
        return {*self.must, *self.should}


class PlacementRules(Part):
    """VM-VM rules name other VMs (near: on the same host; away: on none of theirs);
    VM-host rules name hosts."""

    vm_affinity: Affinity = Field(default_factory=Affinity)
    vm_anti_affinity: Affinity = Field(default_factory=Affinity)
    host_affinity: Affinity = Field(default_factory=Affinity)
    host_anti_affinity: Affinity = Field(default_factory=Affinity)


class VmAsk(Part):
    """A VM as its owner asks for it: the desired size, the least it accepts, its rules."""

    vm: Name
    priority: Owner
    cpu: int = Field(ge=1, le=256)
    mem_mib: int = Field(ge=16, le=4 * 1024 * 1024)
    min_cpu: int | None = Field(None, ge=1, description="degraded placement: never below")
    min_mem_mib: int | None = Field(None, ge=16)
    policy: PlacementPolicy = PlacementPolicy.BALANCED
    group: str = Field("", max_length=63, description="spread group")
    rules: PlacementRules = Field(default_factory=PlacementRules)
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    seed: int = Field(0, ge=0)
    template: Name = "linux"
    power_on: bool = True
    disk_gib: int = Field(DEFAULT_DISK_GIB, ge=1, le=MAX_DISK_GIB)
    checkpoint: Name | None = Field(
        None, description="start from this checkpoint: its memory, devices and disk"
    )
    writes: GuestWrites | None = Field(None, description="its dirty rate (full memory)")
    fork_of: Name | None = Field(
        None, description="fork it from this VM, on its host (the page-sharing daemon asks)"
    )
    inputs: GuestInputs | None = Field(
        None, description="driven by inputs from outside, recordable (full memory)"
    )
    backup_of: Name | None = Field(
        None, description="the FT backup of this VM (the ft service asks): an empty shell"
    )


@registry.register
class PlaceVm(Command, VmAsk):
    """Find a host for a VM of the scheduler's priority; it then asks that host to create it."""

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


@registry.register
class ChangeVmSize(Command):
    """Resize a placed VM through its scheduler: more is reserved on its host first (and
    refused when the host has no room for it); what a smaller size frees is released once
    the host has resized it."""

    vm: Name
    priority: Owner
    cpu: int | None = Field(None, ge=1, le=256)
    mem_mib: int | None = Field(None, ge=16, le=4 * 1024 * 1024)

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


@registry.register
class VmResizeRequested(Event):
    """The scheduler holds room for the new size and asked the VM's host to resize it."""

    vm: Name
    host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=16)
    from_cpu: int = Field(ge=1)
    from_mem_mib: int = Field(ge=1)

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


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
class PlacementRequested(Event, VmAsk):
    """A PlaceVm accepted into its scheduler's queue; it is placed in the next round."""

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmRaised(Event):
    """A VM placed with less than it asked for got its desired size: capacity freed."""

    vm: Name
    host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    from_cpu: int = Field(ge=1)
    from_mem_mib: int = Field(ge=1)

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


class MigrationReason(enum.StrEnum):
    REQUESTED = "requested"
    MAINTENANCE = "maintenance"
    REBALANCE = "rebalance"


@registry.register
class MigrateVm(Command):
    """Move a placed VM, to ``target`` or to the host the scheduler finds best."""

    vm: Name
    priority: Owner
    target: Name | None = None
    mode: MigrationMode = MigrationMode.PRECOPY
    downtime_ms: int = Field(DEFAULT_DOWNTIME_MS, ge=1, le=MAX_DOWNTIME_MS)

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


@registry.register
class MigrationRequested(Event):
    """A migration accepted into its scheduler's queue; it is scheduled in the next round."""

    migration: Name
    vm: Name
    priority: Owner
    target: Name | None = None
    reason: MigrationReason = MigrationReason.REQUESTED
    mode: MigrationMode = MigrationMode.PRECOPY
    downtime_ms: int = Field(DEFAULT_DOWNTIME_MS, ge=1, le=MAX_DOWNTIME_MS)

    def aggregate(self) -> str:
        return f"migration/{self.migration}"


@registry.register
class MigrationScheduled(Event):
    """Capacity on the target and bandwidth on both ends are reserved; the source host is
    asked to start. They are released when the migration completes or aborts."""

    migration: Name
    vm: Name
    source: Name
    target: Name
    priority: Owner
    round: int = Field(ge=0)
    reason: MigrationReason
    rate_mbps: float = Field(gt=0)
    expected_seconds: float = Field(ge=0)
    score: float = 0.0
    runners_up: list[Candidate] = Field(default_factory=list)
    filtered: dict[str, int] = Field(default_factory=dict)
    conflicts: int = Field(0, ge=0)
    mode: MigrationMode = MigrationMode.PRECOPY
    downtime_ms: int = Field(DEFAULT_DOWNTIME_MS, ge=1, le=MAX_DOWNTIME_MS)

    def aggregate(self) -> str:
        return f"migration/{self.migration}"


@registry.register
class MigrationRefused(Event):
    """A migration that could not be scheduled: nothing was reserved."""

    migration: Name
    vm: Name
    reason: str

    def aggregate(self) -> str:
        return f"migration/{self.migration}"


@registry.register
class CopyFile(Command):
    """Copy ``size_mib`` from one host to another at ``rate_mbps``, reserving bandwidth on
    both ends (and storage throughput) for size / rate."""

    copy_id: Name
    priority: Owner
    source: Name
    target: Name
    size_mib: float = Field(gt=0, le=1024**3)
    rate_mbps: float = Field(gt=0, le=1_000_000)

    def aggregate(self) -> str:
        return f"scheduler/{self.priority.value}"


@registry.register
class CopyRequested(Event):
    copy_id: Name
    priority: Owner
    source: Name
    target: Name
    size_mib: float = Field(gt=0)
    rate_mbps: float = Field(gt=0)

    def aggregate(self) -> str:
        return f"copy/{self.copy_id}"


@registry.register
class CopyScheduled(Event):
    copy_id: Name
    source: Name
    target: Name
    priority: Owner
    round: int = Field(ge=0)
    size_mib: float = Field(gt=0)
    rate_mbps: float = Field(gt=0)
    expected_seconds: float = Field(ge=0)
    conflicts: int = Field(0, ge=0)

    def aggregate(self) -> str:
        return f"copy/{self.copy_id}"


@registry.register
class SetMaintenance(Command):
    """Put a host in maintenance (it takes no new work and is emptied) or take it out."""

    host: Name
    on: bool

    def aggregate(self) -> str:
        return "scheduler/high"


@registry.register
class MaintainCheapest(Command):
    """Put the ``count`` hosts that are cheapest to empty (fewest VMs, then the lightest
    load, and whose VMs fit elsewhere) in maintenance."""

    count: int = Field(1, ge=1, le=1000)

    def aggregate(self) -> str:
        return "scheduler/high"


@registry.register
class MaintenanceStarted(Event):
    """The host takes no new work; the migrations that empty it are queued."""

    host: Name
    migrations: list[Name] = Field(default_factory=list)
    cost_rank: int = Field(0, ge=0, description="its place among hosts, cheapest to empty first")

    def aggregate(self) -> str:
        return f"pool/{self.host}"


@registry.register
class HostEvacuated(Event):
    """A host in maintenance holds no VM any more."""

    host: Name

    def aggregate(self) -> str:
        return f"pool/{self.host}"


@registry.register
class MaintenanceEnded(Event):
    host: Name

    def aggregate(self) -> str:
        return f"pool/{self.host}"


@registry.register
class RebalanceProposed(Event):
    """The hosts' load spread passed the threshold: these migrations would shrink it."""

    resource: str
    spread_before: float
    spread_after: float
    threshold: float
    migrations: list[Name]

    def aggregate(self) -> str:
        return "scheduler/high"
