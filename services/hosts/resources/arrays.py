"""Structure-of-arrays inputs and outputs of the vectorised core: one row per host or per VM.

Every VM of every host sits in the same arrays; ``VmArrays.host`` says which host row it
belongs to. All quantities are float64 in the units their names carry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
Index = NDArray[np.intp]
U64 = NDArray[np.uint64]
Mask = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class HostArrays:
    cpu_cores: F64
    cpu_mhz: F64  # per core
    mem_mib: F64
    net_mbps: F64  # each direction (full duplex)
    storage_mbs: F64  # reads and writes together
    storage_gib: F64

    def __len__(self) -> int:
        return len(self.cpu_cores)


@dataclass(frozen=True, slots=True)
class VmArrays:
    host: Index
    vcpus: F64
    mem_mib: F64
    shares: F64  # weight for CPU, network and storage
    cpu_reservation_mhz: F64
    mem_reservation_mib: F64
    cpu_cap: F64  # fraction of vCPUs x core MHz the VM may use
    running: Mask  # powered on (off and suspended VMs demand nothing)
    disk_gib: F64

    def __len__(self) -> int:
        return len(self.host)


@dataclass(frozen=True, slots=True)
class DemandArrays:
    """What each VM's workload wants this tick, before any contention."""

    cpu_cores: F64  # physical cores' worth of running; the core caps it at the VM's vCPUs
    mem_active_mib: F64
    net_tx_mbps: F64
    net_rx_mbps: F64
    storage_read_mbs: F64
    storage_write_mbs: F64


@dataclass(frozen=True, slots=True)
class VmUsage:
    """What each VM was granted this tick, and what waiting for the rest cost it."""

    cpu_demand_mhz: F64
    cpu_used_mhz: F64
    cpu_ready_ms: F64  # vCPU time spent runnable but not running (includes cpu_maxlimited_ms)
    cpu_maxlimited_ms: F64  # the part of cpu_ready_ms due to cpu_cap alone
    cpu_latency_pct: F64  # cpu_ready_ms as a share of the VM's vCPU time
    mem_active_mib: F64
    mem_granted_mib: F64  # backed by host memory: up to max(active, reservation)
    mem_balloon_mib: F64
    mem_swap_mib: F64
    net_tx_mbps: F64
    net_rx_mbps: F64
    storage_read_mbs: F64
    storage_write_mbs: F64
    slowdown: F64  # demand / granted on the VM's most constrained resource, >= 1


@dataclass(frozen=True, slots=True)
class HostUsage:
    """Per-host totals over the VMs placed there."""

    cpu_demand_mhz: F64
    cpu_used_mhz: F64
    mem_active_mib: F64
    mem_granted_mib: F64
    mem_balloon_mib: F64
    mem_swap_mib: F64
    net_tx_mbps: F64
    net_rx_mbps: F64
    storage_read_mbs: F64
    storage_write_mbs: F64
    storage_provisioned_gib: F64
    vms_running: F64


@dataclass(frozen=True, slots=True)
class Usage:
    vms: VmUsage
    hosts: HostUsage
