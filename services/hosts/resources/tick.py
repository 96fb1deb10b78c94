"""The object API for small cases: hosts and VMs in, one record per VM and per host out.

It packs the specs into the structure-of-arrays form and runs the same vectorised core
(``WorkloadTable`` then ``contend``) a fleet-sized caller uses directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.hosts.resources.arrays import F64, HostArrays, HostUsage, VmArrays, VmUsage
from services.hosts.resources.contention import BALLOON_MAX, contend
from services.hosts.resources.errors import ResourceModelError
from services.hosts.resources.specs import HostSpec, PowerState, VmSpec
from services.hosts.resources.workloads import WorkloadTable


@dataclass(frozen=True, slots=True)
class VmTick:
    """One VM's tick; units as named (MHz, ms, %, MiB, Mbit/s, MB/s)."""

    name: str
    host: str
    cpu_demand_mhz: float
    cpu_used_mhz: float
    cpu_ready_ms: float
    cpu_maxlimited_ms: float
    cpu_latency_pct: float
    mem_active_mib: float
    mem_granted_mib: float
    mem_balloon_mib: float
    mem_swap_mib: float
    net_tx_mbps: float
    net_rx_mbps: float
    storage_read_mbs: float
    storage_write_mbs: float
    slowdown: float

    def counters(self) -> dict[str, float]:
        """The counters under the names operators know from vSphere and esxtop."""
        return {
            "cpu.demand": self.cpu_demand_mhz,
            "cpu.usagemhz": self.cpu_used_mhz,
            "cpu.ready": self.cpu_ready_ms,
            "cpu.maxlimited": self.cpu_maxlimited_ms,
            "cpu.latency": self.cpu_latency_pct,
            "mem.active": self.mem_active_mib,
            "mem.granted": self.mem_granted_mib,
            "mem.balloon": self.mem_balloon_mib,
            "mem.swap": self.mem_swap_mib,
            "net.tx": self.net_tx_mbps,
            "net.rx": self.net_rx_mbps,
            "storage.read": self.storage_read_mbs,
            "storage.write": self.storage_write_mbs,
            "slowdown": self.slowdown,
        }


@dataclass(frozen=True, slots=True)
class HostTick:
    name: str
    cpu_capacity_mhz: float
    cpu_demand_mhz: float
    cpu_used_mhz: float
    mem_capacity_mib: float
    mem_active_mib: float
    mem_granted_mib: float
    mem_balloon_mib: float
    mem_swap_mib: float
    net_capacity_mbps: float
    net_tx_mbps: float
    net_rx_mbps: float
    storage_capacity_mbs: float
    storage_read_mbs: float
    storage_write_mbs: float
    storage_capacity_gib: float
    storage_provisioned_gib: float
    vms_running: int


@dataclass(frozen=True, slots=True)
class TickResult:
    sim_time: float
    tick_s: float
    vms: Mapping[str, VmTick]
    hosts: Mapping[str, HostTick]


def _col(values: list[float]) -> F64:
    return np.array(values, dtype=np.float64)


def host_arrays(hosts: Sequence[HostSpec]) -> HostArrays:
    return HostArrays(
        cpu_cores=_col([h.cpu_cores for h in hosts]),
        cpu_mhz=_col([h.cpu_mhz for h in hosts]),
        mem_mib=_col([h.mem_mib for h in hosts]),
        net_mbps=_col([h.net_mbps for h in hosts]),
        storage_mbs=_col([h.storage_mbs for h in hosts]),
        storage_gib=_col([h.storage_gib for h in hosts]),
    )


def vm_arrays(vms: Sequence[VmSpec], hosts: Sequence[HostSpec]) -> VmArrays:
    """The VMs as rows, each pointing at its host's row in ``hosts``."""
    row = {h.name: i for i, h in enumerate(hosts)}
    if len(row) != len(hosts):
        raise ResourceModelError("host names must be unique")
    if len({vm.name for vm in vms}) != len(vms):
        raise ResourceModelError("VM names must be unique")
    if unknown := sorted({vm.host for vm in vms} - row.keys()):
        raise ResourceModelError(f"VMs placed on unknown hosts: {', '.join(unknown)}")

    return VmArrays(
        host=np.array([row[vm.host] for vm in vms], dtype=np.intp),
        vcpus=_col([vm.vcpus for vm in vms]),
        mem_mib=_col([vm.mem_mib for vm in vms]),
        shares=_col([vm.cpu_shares for vm in vms]),
        cpu_reservation_mhz=_col([vm.cpu_reservation_mhz for vm in vms]),
        mem_reservation_mib=_col([vm.mem_reservation_mib for vm in vms]),
        cpu_cap=_col([vm.cpu_cap for vm in vms]),
        running=np.array([vm.power is PowerState.ON for vm in vms], dtype=np.bool_),
        disk_gib=_col([vm.disk_gib for vm in vms]),
    )


def simulate_tick(
    hosts: Sequence[HostSpec],
    vms: Sequence[VmSpec],
    sim_time: float,
    tick_s: float,
    *,
    balloon_max: float = BALLOON_MAX,
) -> TickResult:
    """Every VM's demand at ``sim_time``, shared out over the ``tick_s``-long tick."""
    if tick_s <= 0:
        raise ResourceModelError(f"tick length must be positive, not {tick_s}")
    host_rows = host_arrays(hosts)
    vm_rows = vm_arrays(vms, hosts)
    table = WorkloadTable([vm.workload for vm in vms])
    demand = table.demand(sim_time, vm_rows.vcpus, vm_rows.mem_mib)
    usage = contend(host_rows, vm_rows, demand, tick_s, balloon_max=balloon_max)
    return TickResult(
        sim_time=sim_time,
        tick_s=tick_s,
        vms={vm.name: _vm_tick(vm, usage.vms, i) for i, vm in enumerate(vms)},
        hosts={h.name: _host_tick(h, usage.hosts, i) for i, h in enumerate(hosts)},
    )


def _vm_tick(vm: VmSpec, u: VmUsage, i: int) -> VmTick:
    return VmTick(
        name=vm.name,
        host=vm.host,
        cpu_demand_mhz=float(u.cpu_demand_mhz[i]),
        cpu_used_mhz=float(u.cpu_used_mhz[i]),
        cpu_ready_ms=float(u.cpu_ready_ms[i]),
        cpu_maxlimited_ms=float(u.cpu_maxlimited_ms[i]),
        cpu_latency_pct=float(u.cpu_latency_pct[i]),
        mem_active_mib=float(u.mem_active_mib[i]),
        mem_granted_mib=float(u.mem_granted_mib[i]),
        mem_balloon_mib=float(u.mem_balloon_mib[i]),
        mem_swap_mib=float(u.mem_swap_mib[i]),
        net_tx_mbps=float(u.net_tx_mbps[i]),
        net_rx_mbps=float(u.net_rx_mbps[i]),
        storage_read_mbs=float(u.storage_read_mbs[i]),
        storage_write_mbs=float(u.storage_write_mbs[i]),
        slowdown=float(u.slowdown[i]),
    )


def _host_tick(h: HostSpec, u: HostUsage, i: int) -> HostTick:
    return HostTick(
        name=h.name,
        cpu_capacity_mhz=float(h.cpu_capacity_mhz),
        cpu_demand_mhz=float(u.cpu_demand_mhz[i]),
        cpu_used_mhz=float(u.cpu_used_mhz[i]),
        mem_capacity_mib=float(h.mem_mib),
        mem_active_mib=float(u.mem_active_mib[i]),
        mem_granted_mib=float(u.mem_granted_mib[i]),
        mem_balloon_mib=float(u.mem_balloon_mib[i]),
        mem_swap_mib=float(u.mem_swap_mib[i]),
        net_capacity_mbps=float(h.net_mbps),
        net_tx_mbps=float(u.net_tx_mbps[i]),
        net_rx_mbps=float(u.net_rx_mbps[i]),
        storage_capacity_mbs=float(h.storage_mbs),
        storage_read_mbs=float(u.storage_read_mbs[i]),
        storage_write_mbs=float(u.storage_write_mbs[i]),
        storage_capacity_gib=float(h.storage_gib),
        storage_provisioned_gib=float(u.storage_provisioned_gib[i]),
        vms_running=int(u.vms_running[i]),
    )
