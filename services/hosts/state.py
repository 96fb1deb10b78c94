"""The hosts' state as a fold over their events: ``evolve(fleet, event) -> fleet``, pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Message
from schemas.host import HostCrashed, HostRecovered, HostRegistered, HostState
from schemas.vm import (
    MemoryMode,
    Priority,
    VmCreated,
    VmDestroyed,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResumed,
    VmState,
    VmStunned,
    VmSuspended,
    VmThrottled,
    VmUnstunned,
    WorkloadKind,
)
from services.hosts.resources import HostSpec

# A vCPU may be overcommitted this many times over a host's physical cores.
VCPU_PER_CORE = 4


@dataclass(frozen=True, slots=True)
class Host:
    spec: HostSpec
    state: HostState = HostState.UP
    swap_mib: int = 0

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True)
class Vm:
    name: str
    host: str
    cpu: int
    mem_mib: int
    priority: Priority
    state: VmState
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    template: str = "linux"
    seed: int = 0
    stunned: bool = False
    cpu_cap: float = 1.0


@dataclass(frozen=True, slots=True)
class Fleet:
    hosts: Mapping[str, Host] = field(default_factory=dict)
    vms: Mapping[str, Vm] = field(default_factory=dict)

    def vms_on(self, host: str) -> list[Vm]:
        return [vm for vm in self.vms.values() if vm.host == host]

    def mem_reserved(self, host: str) -> int:
        return sum(vm.mem_mib for vm in self.vms_on(host))

    def vcpus_placed(self, host: str) -> int:
        return sum(vm.cpu for vm in self.vms_on(host))

    def room(self, host: str, cpu: int, mem_mib: int, *, besides: str | None = None) -> bool:
        h = self.hosts[host]
        others = [vm for vm in self.vms_on(host) if vm.name != besides]
        return (
            h.state == HostState.UP
            and h.spec.mem_mib - sum(vm.mem_mib for vm in others) >= mem_mib
            and sum(vm.cpu for vm in others) + cpu <= h.spec.cpu_cores * VCPU_PER_CORE
        )


def evolve(fleet: Fleet, event: Message) -> Fleet:  # noqa: PLR0911 - one case per event
    match event:
        case HostRegistered():
            spec = HostSpec(
                name=event.host,
                cpu_cores=event.cpu_cores,
                cpu_mhz=event.cpu_mhz,
                mem_mib=event.mem_mib,
                net_mbps=event.net_mbps,
                storage_mbs=event.storage_mbs,
                storage_gib=event.storage_gib,
                numa_nodes=event.numa_nodes,
            )
            return _with_host(fleet, Host(spec, HostState.UP, event.swap_mib))
        case HostCrashed() if event.host in fleet.hosts:
            fleet = _with_host(fleet, replace(fleet.hosts[event.host], state=HostState.DOWN))
            lost = {
                name: replace(fleet.vms[name], state=VmState.OFF)
                for name in event.vms_lost
                if name in fleet.vms
            }
            return replace(fleet, vms={**fleet.vms, **lost})
        case HostRecovered() if event.host in fleet.hosts:
            return _with_host(fleet, replace(fleet.hosts[event.host], state=HostState.UP))
        case VmCreated():
            state = VmState.ON if event.powered_on else VmState.OFF
            return _with_vm(
                fleet,
                Vm(
                    event.vm,
                    event.host,
                    event.cpu,
                    event.mem_mib,
                    event.priority,
                    state,
                    event.workload,
                    event.memory_mode,
                    event.template,
                    event.seed,
                ),
            )
        case VmDestroyed():
            return replace(fleet, vms={k: v for k, v in fleet.vms.items() if k != event.vm})
        case VmResized() if event.vm in fleet.vms:
            return _with_vm(
                fleet, replace(fleet.vms[event.vm], cpu=event.cpu, mem_mib=event.mem_mib)
            )
        case VmPoweredOn() | VmResumed() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], state=VmState.ON))
        case VmPoweredOff() if event.vm in fleet.vms:
            vm = replace(fleet.vms[event.vm], state=VmState.OFF, stunned=False)
            return _with_vm(fleet, vm)
        case VmStunned() | VmUnstunned() if event.vm in fleet.vms:
            stunned = isinstance(event, VmStunned)
            return _with_vm(fleet, replace(fleet.vms[event.vm], stunned=stunned))
        case VmThrottled() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], cpu_cap=event.cpu_cap))
        case VmSuspended() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], state=VmState.SUSPENDED))
    return fleet


def _with_host(fleet: Fleet, host: Host) -> Fleet:
    return replace(fleet, hosts={**fleet.hosts, host.name: host})


def _with_vm(fleet: Fleet, vm: Vm) -> Fleet:
    return replace(fleet, vms={**fleet.vms, vm.name: vm})
