"""Many VMs' workloads evaluated together: one kernel call per profile type, not per VM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from services.hosts.resources.arrays import F64, U64, DemandArrays, Index
from services.hosts.resources.noise import seed_array
from services.hosts.resources.profiles import KERNELS, Columns, Kernel, Workload

_DEMAND_FIELDS = tuple(f.name for f in fields(DemandArrays))


@dataclass(frozen=True, slots=True)
class _Group:
    kernel: Kernel
    rows: Index
    columns: Columns
    seeds: U64


def _stack(items: Sequence[Workload]) -> tuple[Columns, U64]:
    names = [f.name for f in fields(items[0]) if f.name != "seed"]
    columns = {n: np.array([getattr(w, n) for w in items], dtype=np.float64) for n in names}
    return columns, seed_array(w.seed for w in items)


class WorkloadTable:
    """The workloads of a fixed list of VMs, stacked once and sampled every tick."""

    def __init__(self, workloads: Sequence[Workload]) -> None:
        self._size = len(workloads)
        by_type: dict[type[Workload], list[int]] = {}
        for row, workload in enumerate(workloads):
            by_type.setdefault(type(workload), []).append(row)
        groups = []
        for kind, rows in by_type.items():
            columns, seeds = _stack([workloads[r] for r in rows])
            groups.append(_Group(KERNELS[kind], np.array(rows, dtype=np.intp), columns, seeds))
        self._groups = tuple(groups)

    def __len__(self) -> int:
        return self._size

    def demand(self, sim_time: float, vcpus: F64, mem_mib: F64) -> DemandArrays:
        """Every VM's demand at ``sim_time``; ``vcpus`` and ``mem_mib`` are in table order."""
        out = {name: np.zeros(self._size) for name in _DEMAND_FIELDS}
        t = np.array([sim_time], dtype=np.float64)
        for g in self._groups:
            part = g.kernel(g.columns, g.seeds, t, vcpus[g.rows], mem_mib[g.rows])
            for name in _DEMAND_FIELDS:
                out[name][g.rows] = getattr(part, name)
        return DemandArrays(**out)


def series(workload: Workload, times: F64, vcpus: int, mem_mib: int) -> DemandArrays:
    """One workload's demand at each of ``times``: the same kernel, vectorised over time."""
    columns, seeds = _stack([workload])
    one = np.ones(1)
    part = KERNELS[type(workload)](columns, seeds, times, one * vcpus, one * mem_mib)
    return DemandArrays(
        **{
            name: np.broadcast_to(getattr(part, name), times.shape).astype(np.float64)
            for name in _DEMAND_FIELDS
        }
    )
