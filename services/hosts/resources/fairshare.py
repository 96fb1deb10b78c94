"""Weighted max-min fair share with floors, for many groups (hosts) at once, without loops.

Within a group whose demand exceeds its capacity, item i is granted

    grant_i = min(demand_i, max(floor_i, weight_i * level))

with one water level per group, chosen so the grants add up to the capacity. Floors
(reservations) are therefore met first; above them capacity is poured in proportion to the
weights, and an item that wants less than its weighted share keeps all it wants while the
rest is split among the others. Groups whose demand fits grant every demand in full.

The level is exact, not iterated: the filled amount S(level) is piecewise linear with a
breakpoint where each item starts to rise above its floor (floor/weight) and where it
stops at its demand (demand/weight). Sorting all breakpoints by (group, level) and running
segmented cumulative sums gives S at every breakpoint; the level sits in the first segment
where S reaches the capacity, by linear interpolation.
"""

from __future__ import annotations

import numpy as np

from services.hosts.resources.arrays import F64, Index

_TINY = 1e-12
# A capacity below this (of MHz, MiB, Mbit/s or MB/s) is none: nothing is granted from it.
NO_CAPACITY = 1e-9


def sum_by(group: Index, values: F64, n: int) -> F64:
    """Per-group totals of ``values`` (length ``n``, zero for empty groups)."""
    return np.bincount(group, values, minlength=n).astype(np.float64, copy=False)


def share_out(group: Index, capacity: F64, demand: F64, floor: F64, weight: F64) -> F64:
    """Each item's grant from its group's capacity (``capacity[group[i]]``).

    ``demand`` and ``floor`` are >= 0 and ``weight`` > 0. A floor above its demand counts as
    the demand; floors that together exceed their group's capacity are scaled down to fit.
    """
    n = len(capacity)
    grant = demand.copy()
    contended = sum_by(group, demand, n) > capacity
    if not contended.any():
        return grant
    grant[contended[group] & (capacity[group] < NO_CAPACITY)] = 0.0
    mine = (contended & (capacity >= NO_CAPACITY))[group]
    if not mine.any():
        return grant
    g = group[mine]
    # In units of the group's capacity and of its total weight, every group's numbers are of
    # the same size, so sums running across groups round alike for a big host and a tiny one.
    cap = capacity[g]
    d = demand[mine] / cap
    f = np.minimum(floor[mine], demand[mine]) / cap
    w = np.maximum(weight[mine], _TINY)
    w = w / sum_by(g, w, n)[g]
    floors = sum_by(g, f, n)
    f = f / np.maximum(floors, 1.0)[g]
    level = _water_level(g, n, d, f, w, np.minimum(floors, 1.0))
    grant[mine] = np.minimum(demand[mine], cap * np.maximum(f, w * level[g]))
    return grant


def _water_level(g: Index, n: int, d: F64, f: F64, w: F64, floors: F64) -> F64:
    """Per group, the level at which the grants fill a capacity of 1."""
    keys = np.concatenate((f / w, d / w))
    groups = np.concatenate((g, g))
    order = np.lexsort((keys, groups))
    keys = keys[order]
    groups = groups[order]
    rise = np.concatenate((w, -w))[order]

    starts_run = np.empty(len(groups), dtype=np.bool_)
    starts_run[0] = True
    np.not_equal(groups[1:], groups[:-1], out=starts_run[1:])
    first = np.flatnonzero(starts_run)
    last = np.append(first[1:], len(groups)) - 1
    run = np.cumsum(starts_run) - 1

    slope = _segmented_cumsum(rise, first, run)  # dS/dlevel just after each breakpoint
    width = np.append(np.diff(keys), 0.0)
    width[last] = 0.0
    # Past the capacity S's exact value no longer matters: capping each segment's area at
    # twice the capacity keeps every S past the crossing clearly above it and the sums small.
    area = np.minimum(slope * width, 2.0)
    reached = floors[groups] + _segmented_cumsum(area, first, run) - area  # S at each key
    below = np.add.reduceat((reached < 1.0).astype(np.intp), first)

    # The level lies between breakpoint j (last one below capacity) and j + 1.
    j = np.clip(first + below - 1, first, last)
    climb = np.where(slope[j] > _TINY, (1.0 - reached[j]) / np.maximum(slope[j], _TINY), 0.0)
    upper = keys[np.minimum(j + 1, last)]
    level_in_run = np.where(below == 0, keys[first], np.minimum(keys[j] + climb, upper))
    level_in_run = np.where(below > last - first, keys[last], level_in_run)

    level = np.zeros(n)
    level[groups[first]] = level_in_run
    return level


def _segmented_cumsum(x: F64, first: Index, run: Index) -> F64:
    total = np.cumsum(x)
    return total - (total[first] - x[first])[run]
