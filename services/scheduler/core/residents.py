"""Where the placed VMs are: by name, by host and by spread group, changed in place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.errors import InvalidPool, UnknownName
from services.scheduler.core.resources import F64, ROWS, Index


@dataclass(frozen=True, slots=True)
class Resident:
    host: int  # the host's row in the pool
    size: F64  # (4,), read-only
    group: str


@dataclass(frozen=True, slots=True)
class VmTable:
    """Every placed VM as structure-of-arrays, for the fleet-wide planners."""

    names: tuple[str, ...]
    host: Index
    size: F64  # (4, vms)

    def __len__(self) -> int:
        return len(self.names)


class Residents:
    """The VM side of a pool. Insertion-ordered dicts serve as ordered sets, so every
    listing (a host's VMs, a group's members) comes out the same way on every run."""

    __slots__ = ("_by_host", "_members", "_vms", "count")

    def __init__(self, hosts: int) -> None:
        self._vms: dict[str, Resident] = {}
        self._by_host: list[dict[str, None]] = [{} for _ in range(hosts)]
        self._members: dict[str, dict[str, None]] = {}
        self.count: Index = np.zeros(hosts, dtype=np.intp)  # VMs per host

    def __len__(self) -> int:
        return len(self._vms)

    def __contains__(self, name: object) -> bool:
        return name in self._vms

    def __iter__(self) -> Iterator[str]:
        return iter(self._vms)

    def get(self, name: str) -> Resident:
        try:
            return self._vms[name]
        except KeyError:
            raise UnknownName(f"no placed VM {name!r}") from None

    def host_of(self, name: str) -> int | None:
        vm = self._vms.get(name)
        return None if vm is None else vm.host

    def hosts_of(self, names: Iterable[str]) -> Index:
        """The hosts of those of ``names`` that are placed (unplaced names are skipped)."""
        rows = [vm.host for vm in map(self._vms.get, names) if vm is not None]
        return np.array(rows, dtype=np.intp)

    def on_host(self, host: int) -> list[str]:
        return list(self._by_host[host])

    def group_count(self, group: str) -> Index:
        """VMs of ``group`` per host; with no group, all VMs per host (then the live
        count itself: read it, do not change it)."""
        if not group:
            return self.count
        members = self._members.get(group, {})
        rows = [self._vms[name].host for name in members]
        return np.bincount(np.array(rows, dtype=np.intp), minlength=len(self.count))

    def add(self, name: str, host: int, size: F64, group: str = "") -> None:
        if name in self._vms:
            raise InvalidPool(f"VM {name!r} is already placed")
        size = size.copy()
        size.flags.writeable = False
        self._vms[name] = Resident(host, size, group)
        self._by_host[host][name] = None
        if group:
            self._members.setdefault(group, {})[name] = None
        self.count[host] += 1

    def remove(self, name: str) -> Resident:
        vm = self.get(name)
        del self._vms[name]
        del self._by_host[vm.host][name]
        if vm.group:
            del self._members[vm.group][name]
        self.count[vm.host] -= 1
        return vm

    def move(self, name: str, host: int) -> Resident:
        """Rehome ``name``; returns where it was."""
        vm = self.remove(name)
        self.add(name, host, vm.size, vm.group)
        return vm

    def copy(self) -> Residents:
        twin = Residents(0)
        twin._vms = dict(self._vms)
        twin._by_host = [dict(names) for names in self._by_host]
        twin._members = {group: dict(names) for group, names in self._members.items()}
        twin.count = self.count.copy()
        return twin

    def table(self) -> VmTable:
        names = tuple(self._vms)
        vms = self._vms.values()
        host = np.fromiter((vm.host for vm in vms), dtype=np.intp, count=len(names))
        size = np.stack([vm.size for vm in vms], axis=1) if names else np.zeros((ROWS, 0))
        return VmTable(names, host, size)
