"""The plain inputs a pool is built from: hosts with their capacity and state, placed VMs."""

from __future__ import annotations

import enum
import math
from dataclasses import astuple, dataclass

from services.scheduler.core.errors import InvalidPool
from services.scheduler.core.resources import Resources, vm_size_problem


class HostState(enum.StrEnum):
    USABLE = "usable"
    MAINTENANCE = "maintenance"  # keeps its VMs, takes no new ones
    FAILED = "failed"  # its VMs are gone; restarting them is HA's business


STATES = tuple(HostState)


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    capacity: Resources
    state: HostState = HostState.USABLE

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidPool("a host needs a name")
        if not all(math.isfinite(x) and x >= 0 for x in astuple(self.capacity)):
            raise InvalidPool(f"host {self.name}: capacity must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class PlacedVm:
    """A VM already on a host, holding ``size`` of it; ``group`` is its spread group.
    Reservations that are not VMs (a migration's or a copy's) are a pool's ``held``."""

    name: str
    host: str
    size: Resources
    group: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidPool("a placed VM needs a name")
        problem = vm_size_problem(self.size)
        if problem is not None:
            raise InvalidPool(f"VM {self.name}: {problem}")
