"""The four placement resources and the row layout every array of the core shares.

Per-host arrays are shaped ``(4, hosts)``: one contiguous row per resource (structure of
arrays), in the order of ``Resource``. A single amount is a ``(4,)`` vector.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
Index = NDArray[np.intp]
Mask = NDArray[np.bool_]


class Resource(enum.IntEnum):
    """A row of every ``(4, hosts)`` array."""

    CPU = 0  # MHz
    MEMORY = 1  # MiB
    NETWORK = 2  # Mbit/s
    STORAGE = 3  # MB/s


ROWS = len(Resource)


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of each resource: a capacity, a free amount, a demand or a grant."""

    cpu_mhz: float
    mem_mib: float
    net_mbps: float = 0.0
    storage_mbs: float = 0.0

    def amounts(self) -> tuple[float, float, float, float]:
        """The four amounts (``dataclasses.astuple`` copies each deeply: ten times slower)."""
        return (self.cpu_mhz, self.mem_mib, self.net_mbps, self.storage_mbs)

    def vector(self) -> F64:
        return np.array((self.cpu_mhz, self.mem_mib, self.net_mbps, self.storage_mbs))

    @classmethod
    def of(cls, vector: F64) -> Resources:
        cpu, mem, net, storage = (float(x) for x in vector)
        return cls(cpu, mem, net, storage)


def readonly(array: F64) -> F64:
    """``array`` made immutable, so a shared amount cannot be changed through an alias."""
    array.flags.writeable = False
    return array


def vm_size_problem(size: Resources) -> str | None:
    """Why ``size`` cannot be a VM's size, or ``None``: CPU and memory must be positive,
    network and storage may be zero (not asked for), nothing negative or infinite."""
    values = size.amounts()
    if not all(math.isfinite(x) for x in values):
        return "sizes must be finite"
    if size.cpu_mhz <= 0 or size.mem_mib <= 0:
        return "CPU and memory must be positive"
    if min(values) < 0:
        return "network and storage must not be negative"
    return None
