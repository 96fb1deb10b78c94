"""The filters, vectorised over all hosts: each takes hosts out of the running and says
how many it took. They run in ``Filter`` order; capacity comes last, so a refusal names
a rule only when the rule alone leaves no host."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.pool import Pool
from services.scheduler.core.requests import Rules
from services.scheduler.core.resources import F64, Mask


class Filter(enum.StrEnum):
    STATE = "state"  # only usable hosts take new work
    HOST_AFFINITY = "host_affinity"  # only the named hosts
    HOST_ANTI_AFFINITY = "host_anti_affinity"  # none of the named hosts
    VM_AFFINITY = "vm_affinity"  # the host of the named (placed) VMs
    VM_ANTI_AFFINITY = "vm_anti_affinity"  # none of the named VMs' hosts
    CAPACITY = "capacity"  # room for the desired size, else for the minimum


# In order, held once: iterating an enum class walks its members anew each time.
FILTERS = tuple(Filter)


@dataclass(frozen=True, slots=True)
class FilterCount:
    filter: Filter
    removed: int


@dataclass(frozen=True, slots=True)
class Screened:
    """The hosts every filter but capacity left (``mask``: read it, do not change it, it
    may be the pool's own), and what each filter removed."""

    mask: Mask
    removed: tuple[int, ...]  # one count per filter, in ``Filter`` order, capacity excluded
    left: int


def screen(pool: Pool, rules: Rules) -> Screened:
    """Apply the state filter and the must rules."""
    mask = pool.usable
    left = int(np.count_nonzero(mask))
    removed = [len(pool) - left]
    if not rules.has_must:
        return Screened(mask, (*removed, 0, 0, 0, 0), left)
    mask = mask.copy()
    counts = _Tally(left, removed)
    if rules.host_affinity.must:  # on one of the named hosts
        keep = np.zeros_like(mask)
        keep[pool.rows(rules.host_affinity.must)] = True
        mask &= keep
    counts.after(mask)
    mask[pool.rows(rules.host_anti_affinity.must)] = False
    counts.after(mask)
    partners = np.unique(pool.vms.hosts_of(rules.vm_affinity.must))
    if len(partners) > 1:  # with each of them: impossible once they live apart
        mask[:] = False
    elif len(partners) == 1:
        mask &= np.arange(len(pool)) == partners[0]
    counts.after(mask)
    mask[pool.vms.hosts_of(rules.vm_anti_affinity.must)] = False
    counts.after(mask)
    return Screened(mask, tuple(counts.removed), counts.left)


class _Tally:
    def __init__(self, left: int, removed: list[int]) -> None:
        self.left = left
        self.removed = removed

    def after(self, mask: Mask) -> None:
        now = int(np.count_nonzero(mask))
        self.removed.append(self.left - now)
        self.left = now


def fits(free: F64, size: F64) -> Mask:
    """Hosts with room for ``size`` ((4,)) in every resource."""
    room: Mask = np.all(free >= size[:, None], axis=0)
    return room
