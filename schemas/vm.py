"""Virtual machine commands and events."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from schemas.base import Command, Event, Name, Part, registry

Priority = Literal["high", "low"]
# A VM's virtual disk: thin, so a large one costs the datastore only what it writes.
DEFAULT_DISK_GIB = 1
MAX_DISK_GIB = 64 * 1024


class VmState(enum.StrEnum):
    OFF = "off"
    ON = "on"
    SUSPENDED = "suspended"


class WorkloadKind(enum.StrEnum):
    """The seeded demand profile a VM's work follows."""

    STEADY = "steady"
    BURSTY = "bursty"
    DIURNAL = "diurnal"
    HADOOP = "hadoop"
    NOISY = "noisy"


class MemoryMode(enum.StrEnum):
    """``full``: guest memory of real bytes; ``accounting``: sizes only, for scale."""

    FULL = "full"
    ACCOUNTING = "accounting"


class GuestWrites(Part):
    """How a full-memory guest writes its memory, when not at the hosts' default pace: the
    dirty rate that decides whether a live migration converges."""

    pages_per_s: int = Field(ge=0, le=1_000_000, description="page writes per emulated second")
    hot_fraction: float = Field(0.1, gt=0, le=1, description="share of its pages written most")
    hot_share: float = Field(0.9, ge=0, le=1, description="share of the writes that go there")


class GuestInputs(Part):
    """A guest driven from outside: every tick, packets from the network, timer reads and
    device completions reach it, drawn by its host from the operating system's entropy
    pool, and it answers each packet with one. What it does is a function of its memory,
    its seed and those inputs, so its execution can be recorded and replayed (FT)."""

    packets_per_s: float = Field(
        2.0, ge=0, le=10_000, description="packets in per emulated second, on average"
    )
    max_packet: int = Field(512, ge=64, le=4080, description="bytes of the largest packet")


@registry.register
class CreateVm(Command):
    """Create a VM on ``host``, in room its scheduler reserved there first (a
    ``CapacityReserved`` for the VM): a host refuses one no reservation covers
    (``no-reservation``), and one that names no host. Users place VMs with ``PlaceVm``."""

    vm: Name
    cpu: int = Field(ge=1, le=256, description="virtual CPUs")
    mem_mib: int = Field(ge=16, le=4 * 1024 * 1024)
    priority: Priority = "low"
    host: Name | None = None
    power_on: bool = True
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    template: Name = Field("linux", description="guest OS template its memory is built from")
    seed: int = Field(0, ge=0, description="seeds its workload and its memory contents")
    disk_gib: int = Field(
        DEFAULT_DISK_GIB, ge=1, le=MAX_DISK_GIB, description="its virtual disk on the datastore"
    )
    checkpoint: Name | None = Field(
        None, description="start from this checkpoint (of its size): memory, devices, disk"
    )
    writes: GuestWrites | None = Field(None, description="its dirty rate (full memory)")
    fork_of: Name | None = Field(
        None, description="a child of this VM (made a template): its pages, copy-on-write"
    )
    inputs: GuestInputs | None = Field(
        None, description="driven by inputs from outside, recordable (full memory)"
    )
    backup_of: Name | None = Field(
        None, description="the FT backup of this VM: an empty shell its FT service fills"
    )

    def aggregate(self) -> str:
        return f"host/{self.host}" if self.host else "hosts"


@registry.register
class PowerOnVm(Command):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class PowerOffVm(Command):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmCreated(Event):
    vm: Name
    host: Name
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    priority: Priority
    powered_on: bool
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    template: Name = "linux"
    seed: int = 0
    # 0: created before VMs had disks.
    disk_gib: int = Field(0, ge=0)
    # Made from this checkpoint: its memory and devices, its disk a child of the checkpoint's.
    checkpoint: Name | None = None
    writes: GuestWrites | None = None
    # Forked from this template: every page maps the template's, copy-on-write.
    fork_of: Name | None = None
    # Driven by inputs from outside: its execution can be recorded.
    inputs: GuestInputs | None = None
    # The FT backup of this VM: empty, off, it runs only what its FT service asks.
    backup_of: Name | None = None

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmPoweredOn(Event):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmPoweredOff(Event):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


class _HostedVmCommand(Command):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _VmEvent(Event):
    vm: Name
    host: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class SuspendVm(_HostedVmCommand):
    pass


@registry.register
class ResumeVm(_HostedVmCommand):
    pass


@registry.register
class ResizeVm(_HostedVmCommand):
    """Change vCPUs and/or memory, up or down, within the VM's reservation on its host;
    memory never below what the guest uses."""

    cpu: int | None = Field(None, ge=1, le=256)
    mem_mib: int | None = Field(None, ge=16, le=4 * 1024 * 1024)


@registry.register
class DestroyVm(_HostedVmCommand):
    pass


@registry.register
class VmSuspended(_VmEvent):
    pass


@registry.register
class VmResumed(_VmEvent):
    pass


@registry.register
class VmResized(_VmEvent):
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    # A shrink: the memory the guest used when it was decided. Replaying the event applies
    # the size it gives, whatever the rebuilt guest holds then.
    used_mib: float | None = Field(None, ge=0)


@registry.register
class VmDestroyed(_VmEvent):
    pass


@registry.register
class StunVm(_HostedVmCommand):
    """Pause a running VM's vCPUs (switchover of a live migration)."""


@registry.register
class UnstunVm(_HostedVmCommand):
    pass


@registry.register
class ThrottleVm(_HostedVmCommand):
    """Cap a VM's CPU at a fraction of its vCPUs (so that pre-copy converges); 1 lifts it."""

    cpu_cap: float = Field(ge=0.0, le=1.0)


@registry.register
class VmStunned(_VmEvent):
    checksum: str | None = Field(None, description="its memory as it stopped (full memory)")


@registry.register
class VmUnstunned(_VmEvent):
    pass


@registry.register
class VmThrottled(_VmEvent):
    cpu_cap: float = Field(ge=0.0, le=1.0)
