"""The checks every hosts decision starts with: the host is known and up, the VM is there,
and why a command is refused when it is not."""

from __future__ import annotations

from schemas.host import HostState
from schemas.service import RejectionCode
from schemas.vm import MemoryMode
from services.hosts.state import Fleet, Host, Vm


class Rejected(Exception):
    """A command refused: nothing changes, and its sender is told why."""

    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def host_named(fleet: Fleet, name: str) -> Host:
    host = fleet.hosts.get(name)
    if host is None:
        raise Rejected(RejectionCode.UNKNOWN_HOST, f"no host {name}")
    return host


def host_up(fleet: Fleet, name: str) -> Host:
    host = host_named(fleet, name)
    if host.state == HostState.DOWN:
        raise Rejected(RejectionCode.HOST_DOWN, f"host {name} is down")
    return host


def vm_on(fleet: Fleet, name: str, host: str) -> Vm:
    vm = fleet.vms.get(name)
    if vm is None or vm.host != host:
        raise Rejected(RejectionCode.UNKNOWN_VM, f"no VM {name} on {host}")
    return vm


def full_vm_on(fleet: Fleet, name: str, host: str) -> Vm:
    vm = vm_on(fleet, name, host)
    if vm.memory_mode != MemoryMode.FULL:
        raise Rejected(RejectionCode.ACCOUNTING_ONLY, f"VM {name} has no guest memory bytes")
    return vm


def not_migrating(fleet: Fleet, vm: Vm) -> None:
    """A migrating VM keeps its size until it lands: its room on the target is taken at it."""
    if (moving := fleet.migration_of(vm.name)) is not None:
        raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is migrating to {moving.target}")
