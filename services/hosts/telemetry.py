"""Each tick's contention over this process's hosts, and the telemetry that reports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from schemas.host import HostTelemetry, VmSample
from schemas.sharing import SharedPageReads
from schemas.vm import MemoryMode, VmState, WorkloadKind
from services.hosts.memory import HostMemory
from services.hosts.memory.geometry import PAGE_MIB, PAGE_SIZE
from services.hosts.resources import (
    Bursty,
    DemandArrays,
    Diurnal,
    HadoopWorker,
    NoisyNeighbour,
    PowerState,
    Steady,
    Usage,
    VmSpec,
    Workload,
    WorkloadTable,
    contend,
    host_arrays,
    vm_arrays,
)
from services.hosts.state import Fleet, Host, Vm

_POWER = {
    VmState.ON: PowerState.ON,
    VmState.OFF: PowerState.OFF,
    VmState.SUSPENDED: PowerState.SUSPENDED,
}
_PROFILES: Mapping[
    WorkloadKind, type[Steady | Bursty | Diurnal | HadoopWorker | NoisyNeighbour]
] = {
    WorkloadKind.STEADY: Steady,
    WorkloadKind.BURSTY: Bursty,
    WorkloadKind.DIURNAL: Diurnal,
    WorkloadKind.HADOOP: HadoopWorker,
    WorkloadKind.NOISY: NoisyNeighbour,
}


def profile(vm: Vm) -> Workload:
    return _PROFILES[vm.workload](seed=vm.seed)


class Contention:
    """Runs the vectorised resource model; its arrays are rebuilt only when the fleet's VMs or
    hosts changed."""

    def __init__(self) -> None:
        # What the arrays were built from, held rather than its id: a freed map's id may be
        # reused by the map that replaced it.
        self._built_from: tuple[Mapping[str, Vm], Mapping[str, Host], tuple[str, ...]] | None = None
        self._vms: list[Vm] = []
        self.index: dict[str, int] = {}
        self.by_host: dict[str, list[Vm]] = {}
        self.usage: Usage | None = None

    def run(
        self,
        fleet: Fleet,
        hosts: list[str],
        sim_time: float,
        tick_s: float,
        disk_mbs: Mapping[str, tuple[float, float]] | None = None,
    ) -> Usage | None:
        """``disk_mbs``: each VM's real disk reads and writes (MB/s), added to what its
        workload profile asks of storage."""
        built = self._built_from
        if (
            built is None
            or built[0] is not fleet.vms
            or built[1] is not fleet.hosts
            or built[2] != tuple(hosts)
        ):
            wanted = set(hosts)
            self._vms = [vm for vm in fleet.vms.values() if vm.host in wanted]
            host_specs = [fleet.hosts[h].spec for h in hosts]
            specs = [
                VmSpec(
                    vm.name,
                    vm.host,
                    vm.cpu,
                    vm.mem_mib,
                    profile(vm),
                    PowerState.SUSPENDED if vm.stunned else _POWER[vm.state],
                    cpu_cap=vm.cpu_cap,
                    disk_gib=vm.disk_gib,
                )
                for vm in self._vms
            ]
            self._hosts = host_arrays(host_specs)
            self._rows = vm_arrays(specs, host_specs)
            self._table = WorkloadTable([s.workload for s in specs])
            self.index = {vm.name: i for i, vm in enumerate(self._vms)}
            self.by_host = {h: [] for h in hosts}
            for vm in self._vms:
                self.by_host[vm.host].append(vm)
            self._built_from = (fleet.vms, fleet.hosts, tuple(hosts))
        if not hosts:
            self.usage = None
            return None
        demand = self._table.demand(sim_time, self._rows.vcpus, self._rows.mem_mib)
        if disk_mbs:
            demand = _with_disk_io(demand, self.index, disk_mbs)
        self.usage = contend(self._hosts, self._rows, demand, tick_s)
        return self.usage

    def slowdown(self, vm: str) -> float:
        i = self.index.get(vm)
        return 1.0 if i is None or self.usage is None else float(self.usage.vms.slowdown[i])

    def active_mib(self, vm: str) -> float:
        i = self.index.get(vm)
        return 0.0 if i is None or self.usage is None else float(self.usage.vms.mem_active_mib[i])

    def cpu_ready_ms(self, vm: str) -> float:
        i = self.index.get(vm)
        return 0.0 if i is None or self.usage is None else float(self.usage.vms.cpu_ready_ms[i])


def _with_disk_io(
    demand: DemandArrays, index: Mapping[str, int], disk_mbs: Mapping[str, tuple[float, float]]
) -> DemandArrays:
    rows = [(index[vm], mbs) for vm, mbs in disk_mbs.items() if vm in index]
    if not rows:
        return demand
    at = np.array([i for i, _ in rows], dtype=np.int64)
    read = demand.storage_read_mbs.copy()
    write = demand.storage_write_mbs.copy()
    read[at] += [r for _, (r, _) in rows]
    write[at] += [w for _, (_, w) in rows]
    return replace(demand, storage_read_mbs=read, storage_write_mbs=write)


def samples(
    fleet: Fleet,
    hosts: list[str],
    tick: int,
    contention: Contention,
    memory: Mapping[str, HostMemory],
    disk_mbs: Mapping[str, tuple[float, float]] | None = None,
    datastore_gib: tuple[float, float] = (0.0, 0.0),
    shared_reads: Mapping[str, list[SharedPageReads]] | None = None,
) -> list[HostTelemetry]:
    """One telemetry message per host, carrying its VMs' samples (and the reads of shared
    pages its guests made in the last tick)."""
    out = []
    usage, index = contention.usage, contention.index
    for row, name in enumerate(hosts):
        spec = fleet.hosts[name].spec
        vms = contention.by_host.get(name, [])
        mem = memory.get(name)
        shared = sharing = 0
        if mem is not None and any(vm.memory_mode == MemoryMode.FULL for vm in vms):
            # Only guests of real bytes share frames; counting them scans the host's frames.
            memory_use = mem.usage()
            shared, sharing = memory_use.shared_frames, memory_use.saved_frames
        reserved, used = mem.swap_usage() if mem is not None else (0, 0)
        scratch = fleet.hosts[name].scratch
        scratch_by_vm = scratch.by_vm()
        h = usage.hosts if usage is not None else None
        out.append(
            HostTelemetry(
                host=name,
                tick=tick,
                cpu_capacity_mhz=spec.cpu_capacity_mhz,
                cpu_demand_mhz=int(h.cpu_demand_mhz[row]) if h else 0,
                cpu_used_mhz=int(h.cpu_used_mhz[row]) if h else 0,
                mem_capacity_mib=spec.mem_mib,
                mem_reserved_mib=sum(vm.mem_mib for vm in vms),
                mem_active_mib=float(h.mem_active_mib[row]) if h else 0.0,
                mem_balloon_mib=float(h.mem_balloon_mib[row]) if h else 0.0,
                mem_swap_mib=float(h.mem_swap_mib[row]) if h else 0.0,
                mem_shared_saved_mib=sharing * PAGE_MIB,
                mem_pages_shared=shared,
                mem_pages_sharing=sharing,
                mem_pages_unshared_again=mem.unshared_again if mem is not None else 0,
                shared_reads=(shared_reads or {}).get(name, []),
                swap_reserved_mib=reserved * PAGE_MIB,
                swap_used_mib=used * PAGE_MIB,
                net_capacity_mbps=spec.net_mbps,
                net_used_mbps=float(h.net_tx_mbps[row] + h.net_rx_mbps[row]) if h else 0.0,
                storage_capacity_mbs=spec.storage_mbs,
                storage_used_mbs=(
                    float(h.storage_read_mbs[row] + h.storage_write_mbs[row]) if h else 0.0
                ),
                scratch_capacity_mib=scratch.capacity_mib,
                scratch_used_mib=sum(scratch_by_vm.values()),
                datastore_capacity_gib=datastore_gib[0],
                datastore_used_gib=datastore_gib[1],
                vms_running=sum(vm.state == VmState.ON for vm in vms),
                vms_total=len(vms),
                vms=[
                    _sample(
                        vm,
                        usage,
                        index.get(vm.name),
                        scratch_by_vm.get(vm.name, 0),
                        (disk_mbs or {}).get(vm.name, (0.0, 0.0)),
                    )
                    for vm in vms
                ],
            )
        )
    return out


def _sample(
    vm: Vm, usage: Usage | None, i: int | None, scratch_mib: int, disk_mbs: tuple[float, float]
) -> VmSample:
    read_iops, write_iops = (round(mbs * 1e6 / PAGE_SIZE, 1) for mbs in disk_mbs)
    if usage is None or i is None:
        return VmSample(
            vm=vm.name,
            state=vm.state.value,
            cpu_demand_mhz=0,
            cpu_used_mhz=0,
            cpu_ready_ms=0,
            cpu_latency_pct=0,
            mem_active_mib=0,
            mem_balloon_mib=0,
            mem_swap_mib=0,
            net_tx_mbps=0,
            net_rx_mbps=0,
            storage_read_mbs=0,
            storage_write_mbs=0,
            slowdown=1.0,
            scratch_mib=scratch_mib,
            disk_gib=vm.disk_gib,
            disk_read_iops=read_iops,
            disk_write_iops=write_iops,
        )
    u = usage.vms
    return VmSample(
        vm=vm.name,
        state=vm.state.value,
        cpu_demand_mhz=round(float(u.cpu_demand_mhz[i]), 1),
        cpu_used_mhz=round(float(u.cpu_used_mhz[i]), 1),
        cpu_ready_ms=round(float(u.cpu_ready_ms[i]), 2),
        cpu_latency_pct=round(float(u.cpu_latency_pct[i]), 2),
        mem_active_mib=round(float(u.mem_active_mib[i]), 1),
        mem_balloon_mib=round(float(u.mem_balloon_mib[i]), 1),
        mem_swap_mib=round(float(u.mem_swap_mib[i]), 1),
        net_tx_mbps=round(float(u.net_tx_mbps[i]), 2),
        net_rx_mbps=round(float(u.net_rx_mbps[i]), 2),
        storage_read_mbs=round(float(u.storage_read_mbs[i]), 2),
        storage_write_mbs=round(float(u.storage_write_mbs[i]), 2),
        slowdown=max(1.0, round(float(u.slowdown[i]), 4)),
        scratch_mib=scratch_mib,
        disk_gib=vm.disk_gib,
        disk_read_iops=read_iops,
        disk_write_iops=write_iops,
    )
