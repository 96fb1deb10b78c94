"""The hosts' state and decisions, pure: ``decide(fleet, command)`` and ``evolve(fleet, event)``."""

from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Event, Message
from schemas.host import HostRegistered, HostTelemetry
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import (
    CreateVm,
    PowerOffVm,
    PowerOnVm,
    Priority,
    VmCreated,
    VmPoweredOff,
    VmPoweredOn,
    VmState,
)

# A vCPU may be overcommitted this many times over a host's physical cores.
VCPU_PER_CORE = 4
# Running guests use this share of their vCPUs on average; telemetry wobbles around it.
BASE_UTILISATION = 0.5


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    cpu_cores: int
    cpu_mhz: int
    mem_mib: int


@dataclass(frozen=True, slots=True)
class Vm:
    name: str
    host: str
    cpu: int
    mem_mib: int
    priority: Priority
    state: VmState


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


def decide(fleet: Fleet, env: Envelope[Message]) -> list[Event]:
    cmd = env.data
    match cmd:
        case CreateVm():
            return _create(fleet, cmd, env.id)
        case PowerOnVm() | PowerOffVm():
            return _power(fleet, cmd, env.id)
    return [_reject(env.subject, env.id, cmd, RejectionCode.WRONG_STATE, "not a hosts command")]


def _reject(
    about: str, command_id: uuid.UUID, cmd: Message, code: RejectionCode, reason: str
) -> CommandRejected:
    return CommandRejected(
        about=about, command_id=command_id, command_type=cmd.type_name(), code=code, reason=reason
    )


def _create(fleet: Fleet, cmd: CreateVm, cmd_id: uuid.UUID) -> list[Event]:
    about = f"vm/{cmd.vm}"
    if cmd.vm in fleet.vms:
        return [
            _reject(
                about,
                cmd_id,
                cmd,
                RejectionCode.ALREADY_EXISTS,
                f"VM {cmd.vm} already exists on {fleet.vms[cmd.vm].host}",
            )
        ]
    if cmd.host is not None and cmd.host not in fleet.hosts:
        return [_reject(about, cmd_id, cmd, RejectionCode.UNKNOWN_HOST, f"no host {cmd.host}")]
    names = [cmd.host] if cmd.host is not None else sorted(fleet.hosts)
    fits = [
        name
        for name in names
        if fleet.hosts[name].mem_mib - fleet.mem_reserved(name) >= cmd.mem_mib
        and fleet.vcpus_placed(name) + cmd.cpu <= fleet.hosts[name].cpu_cores * VCPU_PER_CORE
    ]
    if not fits:
        free = max((fleet.hosts[n].mem_mib - fleet.mem_reserved(n) for n in names), default=0)
        return [
            _reject(
                about,
                cmd_id,
                cmd,
                RejectionCode.INSUFFICIENT_CAPACITY,
                f"no host has {cmd.mem_mib} MiB and {cmd.cpu} vCPUs free "
                f"(most free memory: {free} MiB)",
            )
        ]
    # The most free memory wins; among equals, the first host by name.
    host = max(fits, key=lambda n: fleet.hosts[n].mem_mib - fleet.mem_reserved(n))
    return [
        VmCreated(
            vm=cmd.vm,
            host=host,
            cpu=cmd.cpu,
            mem_mib=cmd.mem_mib,
            priority=cmd.priority,
            powered_on=cmd.power_on,
        )
    ]


def _power(fleet: Fleet, cmd: PowerOnVm | PowerOffVm, cmd_id: uuid.UUID) -> list[Event]:
    about = f"vm/{cmd.vm}"
    vm = fleet.vms.get(cmd.vm)
    if vm is None or vm.host != cmd.host:
        return [
            _reject(about, cmd_id, cmd, RejectionCode.UNKNOWN_VM, f"no VM {cmd.vm} on {cmd.host}")
        ]
    want = VmState.ON if isinstance(cmd, PowerOnVm) else VmState.OFF
    if vm.state == want:
        return [
            _reject(about, cmd_id, cmd, RejectionCode.WRONG_STATE, f"VM {cmd.vm} is already {want}")
        ]
    if want == VmState.ON:
        return [VmPoweredOn(vm=vm.name, host=vm.host)]
    return [VmPoweredOff(vm=vm.name, host=vm.host)]


def evolve(fleet: Fleet, event: Message) -> Fleet:
    match event:
        case HostRegistered():
            host = Host(event.host, event.cpu_cores, event.cpu_mhz, event.mem_mib)
            return replace(fleet, hosts={**fleet.hosts, event.host: host})
        case VmCreated():
            state = VmState.ON if event.powered_on else VmState.OFF
            vm = Vm(event.vm, event.host, event.cpu, event.mem_mib, event.priority, state)
            return replace(fleet, vms={**fleet.vms, event.vm: vm})
        case VmPoweredOn() | VmPoweredOff() if event.vm in fleet.vms:
            state = VmState.ON if isinstance(event, VmPoweredOn) else VmState.OFF
            vm = replace(fleet.vms[event.vm], state=state)
            return replace(fleet, vms={**fleet.vms, event.vm: vm})
    return fleet


def sample(fleet: Fleet, host: str, tick: int, seed: int) -> HostTelemetry:
    """One telemetry sample: running guests' demand wobbles around a base utilisation."""
    h = fleet.hosts[host]
    vms = fleet.vms_on(host)
    running = [vm for vm in vms if vm.state == VmState.ON]
    capacity = h.cpu_cores * h.cpu_mhz
    demand = 0
    for vm in running:
        phase = zlib.crc32(f"{seed}:{vm.name}".encode()) % 1000 / 1000 * math.tau
        utilisation = BASE_UTILISATION + 0.3 * math.sin(tick / 10 + phase)
        demand += int(vm.cpu * h.cpu_mhz * utilisation)
    return HostTelemetry(
        host=host,
        tick=tick,
        cpu_capacity_mhz=capacity,
        cpu_demand_mhz=demand,
        cpu_used_mhz=min(demand, capacity),
        mem_capacity_mib=h.mem_mib,
        mem_reserved_mib=sum(vm.mem_mib for vm in vms),
        vms_running=len(running),
        vms_total=len(vms),
    )
