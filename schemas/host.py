"""Emulated hypervisor hosts: registration, failure injection, and telemetry."""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, Part, Telemetry, registry
from schemas.sharing import SharedPageReads


class HostState(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    # Declared failed by its silence (HostFailed) and not heard from since: as shown in
    # views; a host's own state stays up, so that it heartbeats again when it can.
    FAILED = "failed"


@registry.register
class HostRegistered(Event):
    host: Name
    cpu_cores: int = Field(ge=1)
    cpu_mhz: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    net_mbps: float = Field(10_000.0, ge=0)
    storage_mbs: float = Field(2_000.0, ge=0, description="storage throughput, MB/s")
    storage_gib: float = Field(10_240.0, ge=0)
    numa_nodes: int = Field(1, ge=1)
    swap_mib: int = Field(0, ge=0, description="thick-provisioned swap reservation")
    scratch_mib: int = Field(204_800, ge=0, description="the pool its VMs take scratch space from")

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _HostCommand(Command):
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class CrashHost(_HostCommand):
    """Fail a host: it stops publishing and answering; its VMs power off."""


@registry.register
class RecoverHost(_HostCommand):
    """Bring a crashed host back (empty of running VMs)."""


@registry.register
class HostCrashed(Event):
    host: Name
    vms_lost: list[Name]

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class GuestMemoryDiverged(Event):
    """A host's guest memory could not follow an event of the log (found rebuilding from
    it): the event stands; the memory model is as near to it as it could get."""

    host: Name
    event_type: str
    event_seq: int = Field(ge=0)
    subject: str
    error: str

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class HostRecovered(Event):
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


class VmSample(Part):
    """One VM's counters for one tick, named after the ones operators know."""

    vm: Name
    state: str
    cpu_demand_mhz: float = Field(ge=0)
    cpu_used_mhz: float = Field(ge=0)
    cpu_ready_ms: float = Field(ge=0, description="cpu.ready: runnable but waiting, ms per tick")
    cpu_latency_pct: float = Field(ge=0, description="cpu.latency")
    mem_active_mib: float = Field(ge=0)
    mem_balloon_mib: float = Field(ge=0)
    mem_swap_mib: float = Field(ge=0)
    net_tx_mbps: float = Field(ge=0)
    net_rx_mbps: float = Field(ge=0)
    storage_read_mbs: float = Field(ge=0)
    storage_write_mbs: float = Field(ge=0)
    slowdown: float = Field(ge=1, description="how much slower its work goes than alone")
    scratch_mib: float = Field(0, ge=0, description="scratch space it holds on the host")
    disk_gib: int = Field(0, ge=0, description="its virtual disk on the shared datastore")
    disk_read_iops: float = Field(0, ge=0, description="4 KiB blocks its guest read, per second")
    disk_write_iops: float = Field(0, ge=0, description="4 KiB blocks its guest wrote, per second")


@registry.register
class HostTelemetry(Telemetry):
    host: Name
    tick: int = Field(ge=0)
    cpu_capacity_mhz: int = Field(ge=0)
    cpu_demand_mhz: int = Field(ge=0)
    cpu_used_mhz: int = Field(ge=0)
    mem_capacity_mib: int = Field(ge=0)
    mem_reserved_mib: int = Field(ge=0)
    mem_active_mib: float = Field(0, ge=0)
    mem_balloon_mib: float = Field(0, ge=0)
    mem_swap_mib: float = Field(0, ge=0)
    mem_shared_saved_mib: float = Field(0, ge=0, description="freed by copy-on-write sharing")
    mem_pages_shared: int = Field(0, ge=0, description="frames several guest pages map")
    mem_pages_sharing: int = Field(0, ge=0, description="mappings beyond a frame's first")
    mem_pages_unshared_again: int = Field(
        0, ge=0, description="copies of shared pages made since the process started"
    )
    shared_reads: list[SharedPageReads] = Field(
        default_factory=list, description="the last tick's reads of shared pages"
    )
    swap_reserved_mib: float = Field(0, ge=0, description="the host's thick swap reservation")
    swap_used_mib: float = Field(0, ge=0, description="blocks the VMs' thin swap files hold")
    net_capacity_mbps: float = Field(0, ge=0)
    net_used_mbps: float = Field(0, ge=0)
    storage_capacity_mbs: float = Field(0, ge=0)
    storage_used_mbs: float = Field(0, ge=0)
    scratch_capacity_mib: float = Field(0, ge=0)
    scratch_used_mib: float = Field(0, ge=0)
    datastore_capacity_gib: float = Field(0, ge=0, description="the shared datastore it sees")
    datastore_used_gib: float = Field(0, ge=0, description="what the datastore's files hold")
    vms_running: int = Field(ge=0)
    vms_total: int = Field(ge=0)
    vms: list[VmSample] = Field(default_factory=list)

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class ClockLeased(Event):
    """A hosts process may tick up to ``until_sim_time`` (emulated seconds): written before
    its ticks pass the previous lease, so a restarted process, which goes on from the
    latest lease in the log, never repeats a tick or an emulated time it may have used."""

    until_sim_time: float = Field(ge=0)
    tick: int = Field(ge=0, description="the tick at which the lease was taken")

    def aggregate(self) -> str:
        return "clock/hosts"
