"""The shared pool as one snapshot: hosts as structure-of-arrays, and where VMs are.

A ``Pool`` changes in place: ``reserve``, ``release``, ``add_vm``, ``remove_vm``,
``move_vm`` and ``set_state`` update its arrays without a copy (O(1) each), because a
decision loop at 1,000 hosts cannot afford a copy per placement. Every planner of the
package (``place_many``, ``plan_evacuation``, ``propose_rebalance``) copies the pool it
is given first and hands back the changed copy, so a caller's snapshot never changes
under it; ``copy`` and ``without`` also return new pools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from services.scheduler.core.errors import InsufficientCapacity, InvalidPool, UnknownName
from services.scheduler.core.inventory import STATES, Host, HostState, PlacedVm
from services.scheduler.core.residents import Residents
from services.scheduler.core.resources import F64, ROWS, Index, Mask, Resources, readonly

if TYPE_CHECKING:
    from services.scheduler.core.spare import Spare

_USABLE = STATES.index(HostState.USABLE)


@dataclass(frozen=True, slots=True, eq=False)
class Pool:
    """Frozen fields over arrays that the in-place methods below change (see the module's
    docstring); hosts are rows, in the order they were given."""

    names: tuple[str, ...]
    index: Mapping[str, int]  # host name -> row
    capacity: F64  # (4, hosts), read-only
    inv_capacity: F64  # 1 / capacity, 0 where a host has none of a resource; read-only
    present: F64  # 1 where a host has some of a resource, else 0; read-only
    free: F64  # (4, hosts); below 0 only where the given placements over-commit a host
    state: NDArray[np.int8]  # index into inventory.STATES
    usable: Mask  # state is USABLE
    vms: Residents

    @classmethod
    def build(
        cls,
        hosts: Sequence[Host],
        vms: Iterable[PlacedVm] = (),
        held: Mapping[str, Resources] | None = None,
    ) -> Pool:
        """``held``: per host, capacity taken by what is not a VM (migrations, copies)."""
        names = tuple(h.name for h in hosts)
        index = {name: row for row, name in enumerate(names)}
        if len(index) != len(names):
            raise InvalidPool("host names must be unique")
        capacity = np.array([h.capacity.vector() for h in hosts]).reshape(-1, ROWS).T.copy()
        state = np.array([STATES.index(h.state) for h in hosts], dtype=np.int8)
        inverse = np.divide(1.0, capacity, out=np.zeros_like(capacity), where=capacity > 0)
        pool = cls(
            names=names,
            index=MappingProxyType(index),
            capacity=readonly(capacity),
            inv_capacity=readonly(inverse),
            present=readonly((capacity > 0).astype(np.float64)),
            free=capacity.copy(),
            state=state,
            usable=state == _USABLE,
            vms=Residents(len(names)),
        )
        for vm in vms:
            if vm.host not in index:
                raise InvalidPool(f"VM {vm.name} is on unknown host {vm.host!r}")
            size = vm.size.vector()
            # Given placements are facts: they may over-commit; new ones never do.
            pool.free[:, index[vm.host]] -= size
            pool.vms.add(vm.name, index[vm.host], size, vm.group)
        for host, amount in (held or {}).items():
            if host not in index:
                raise InvalidPool(f"capacity held on unknown host {host!r}")
            pool.free[:, index[host]] -= amount.vector()
        return pool

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        usable = int(np.count_nonzero(self.usable))
        return f"Pool({len(self)} hosts, {usable} usable, {len(self.vms)} VMs)"

    def row(self, host: str) -> int:
        try:
            return self.index[host]
        except KeyError:
            raise UnknownName(f"no host {host!r}") from None

    def rows(self, hosts: Iterable[str]) -> Index:
        """The rows of those of ``hosts`` the pool holds (unknown names are skipped)."""
        return np.array([self.index[h] for h in hosts if h in self.index], dtype=np.intp)

    def state_of(self, host: int) -> HostState:
        return STATES[int(self.state[host])]

    def set_state(self, host: int, state: HostState) -> None:
        self.state[host] = STATES.index(state)
        self.usable[host] = state is HostState.USABLE

    def free_of(self, host: int) -> Resources:
        return Resources.of(self.free[:, host])

    def used(self) -> F64:
        """(4, hosts): what the placed VMs hold."""
        return self.capacity - self.free

    def utilisation(self) -> F64:
        """(4, hosts): used / capacity, 0 for a resource a host does not have."""
        return self.used() * self.inv_capacity

    def reserve(self, host: int, amount: F64) -> None:
        """Take ``amount`` ((4,)) from the host's free capacity, in place."""
        if np.any(amount < 0) or np.any(amount > self.free[:, host]):
            raise InsufficientCapacity(
                f"host {self.names[host]}: {Resources.of(amount)} does not fit in "
                f"{self.free_of(host)}"
            )
        self.free[:, host] -= amount

    def release(self, host: int, amount: F64) -> None:
        self.free[:, host] += amount

    def add_vm(self, name: str, host: int, size: F64, group: str = "") -> None:
        """Reserve ``size`` on ``host`` for a new VM ``name``, in place."""
        if name in self.vms:
            raise InvalidPool(f"VM {name!r} is already placed")
        self.reserve(host, size)
        self.vms.add(name, host, size, group)

    def remove_vm(self, name: str) -> None:
        vm = self.vms.remove(name)
        self.release(vm.host, vm.size)

    def move_vm(self, name: str, host: int) -> int:
        """Move ``name`` with its size to ``host``, in place; returns the host it left."""
        vm = self.vms.get(name)
        self.reserve(host, vm.size)
        self.release(vm.host, vm.size)
        self.vms.move(name, host)
        return vm.host

    def copy(self) -> Pool:
        return Pool(
            names=self.names,
            index=self.index,
            capacity=self.capacity,
            inv_capacity=self.inv_capacity,
            present=self.present,
            free=self.free.copy(),
            state=self.state.copy(),
            usable=self.usable.copy(),
            vms=self.vms.copy(),
        )

    def without(self, spare: Spare) -> Pool:
        """A copy whose free capacity leaves out the HA spare: whatever is placed on it can
        never use the spare (where the spare exceeds a host's free capacity, the copy has
        nothing free there)."""
        view = self.copy()
        view.free[...] = np.minimum(self.free, np.maximum(self.free - spare.reserved, 0.0))
        return view
