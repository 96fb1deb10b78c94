"""The hosts' resource and contention model, pure: capacity, workloads, fair share, counters.

Small cases use the object API (``HostSpec``, ``VmSpec``, a ``Workload`` profile,
``simulate_tick``); a fleet keeps structure-of-arrays (``HostArrays``, ``VmArrays``, a
``WorkloadTable``) and calls ``contend`` each tick. Both run the same vectorised core.
"""

from services.hosts.resources.arrays import (
    DemandArrays,
    HostArrays,
    HostUsage,
    Usage,
    VmArrays,
    VmUsage,
)
from services.hosts.resources.contention import BALLOON_MAX, MAX_SLOWDOWN, contend
from services.hosts.resources.errors import ResourceModelError
from services.hosts.resources.fairshare import share_out
from services.hosts.resources.profiles import (
    Bursty,
    Diurnal,
    HadoopWorker,
    NoisyNeighbour,
    Steady,
    Workload,
)
from services.hosts.resources.specs import HostSpec, NumaNode, PowerState, VmSpec
from services.hosts.resources.tick import (
    HostTick,
    TickResult,
    VmTick,
    host_arrays,
    simulate_tick,
    vm_arrays,
)
from services.hosts.resources.workloads import WorkloadTable, series

__all__ = [
    "BALLOON_MAX",
    "MAX_SLOWDOWN",
    "Bursty",
    "DemandArrays",
    "Diurnal",
    "HadoopWorker",
    "HostArrays",
    "HostSpec",
    "HostTick",
    "HostUsage",
    "NoisyNeighbour",
    "NumaNode",
    "PowerState",
    "ResourceModelError",
    "Steady",
    "TickResult",
    "Usage",
    "VmArrays",
    "VmSpec",
    "VmTick",
    "VmUsage",
    "Workload",
    "WorkloadTable",
    "contend",
    "host_arrays",
    "series",
    "share_out",
    "simulate_tick",
    "vm_arrays",
]
