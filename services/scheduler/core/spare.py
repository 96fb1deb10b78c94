"""HA spare capacity: what to hold back so the VMs of any K failed hosts can restart.

The rule is the slot rule of VMware HA's admission control, which is simple and safe:

* Only the protected VMs count (all placed VMs unless told): a scheduler protects its
  own, high-priority VMs, and low-priority ones restart only where there is room.
* A *slot* is the largest protected VM, resource by resource, so any of them fits in one.
* The K hosts (usable or in maintenance) with the most protected VMs hold N of them
  together: no K hosts can lose more.
* Every usable host holds back ``ceil(N / (U - K))`` slots, U being the usable hosts.

Whichever K hosts fail, at least U - K usable hosts survive and together hold back at
least N slots. A survivor that has taken fewer VMs than its quota of slots still has
room for any VM, so restarting the failed VMs one by one, each on any host with room,
never gets stuck. It is conservative: one large VM makes every slot large.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.errors import AbsurdRequest, SpareUncoverable
from services.scheduler.core.inventory import STATES, HostState
from services.scheduler.core.pool import Pool
from services.scheduler.core.resources import F64, Resources, readonly

_FAILED = STATES.index(HostState.FAILED)


@dataclass(frozen=True, slots=True)
class Spare:
    failures: int
    slot: Resources
    slots_per_host: int
    reserved: F64  # (4, hosts): held back on each usable host, zero on the others
    shortfall: F64  # (4, hosts): what of ``reserved`` the host does not have free now

    @property
    def covered(self) -> bool:
        """Every host has its spare free: any ``failures`` hosts can fail now."""
        return not bool(np.any(self.shortfall > 0))

    def on(self, pool: Pool, host: str) -> Resources:
        return Resources.of(self.reserved[:, pool.row(host)])


def ha_spare(pool: Pool, failures: int = 1, protect: Collection[str] | None = None) -> Spare:
    """The spare to hold back on ``pool`` so that the ``protect``-ed VMs (all if ``None``)
    of any ``failures`` hosts can restart on the others."""
    if failures < 0:
        raise AbsurdRequest(f"cannot cover {failures} failures")
    usable = int(np.count_nonzero(pool.usable))
    if failures and failures >= usable:
        raise SpareUncoverable(f"{failures} failures would leave none of {usable} hosts")
    table = pool.vms.table()
    counted = (pool.state != _FAILED)[table.host]
    if protect is not None:
        counted &= np.array([name in protect for name in table.names], dtype=np.bool_)
    per_host_count = np.bincount(table.host[counted], minlength=len(pool))
    at_risk = int(np.sort(per_host_count)[::-1][:failures].sum())
    slot = table.size[:, counted].max(axis=1, initial=0.0)
    per_host = math.ceil(at_risk / (usable - failures)) if at_risk else 0
    reserved = np.where(pool.usable, (slot * per_host)[:, None], 0.0)
    shortfall = np.maximum(reserved - np.maximum(pool.free, 0.0), 0.0)
    return Spare(
        failures=failures,
        slot=Resources.of(slot),
        slots_per_host=per_host,
        reserved=readonly(reserved),
        shortfall=readonly(shortfall),
    )
