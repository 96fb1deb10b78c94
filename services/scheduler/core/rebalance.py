"""Rebalancing: when the hosts' load drifts apart, migrations that bring it together.

The spread is the gap between the most and the least utilised usable host on one
resource (CPU unless told). While it exceeds the threshold, each greedy step weighs
every VM of the most loaded host against every other host at once and takes the move
that leaves the smallest spread, and among equals the one that evens the hosts most
(the largest drop in the sum of squared utilisations). A move that only evens the hosts
out, leaving the spread as it is, is still taken: with several hosts tied at the top,
the spread falls only once each of them has given something up. Every move lowers that
sum, so the loop cannot cycle; it stops when no move helps or after ``max_moves``.

A destination passes the same filters as a placement: usable, room for the VM's whole
size, and the VM's must-rules (should-rules are not weighed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.filters import fits, screen
from services.scheduler.core.moves import Move
from services.scheduler.core.pool import Pool
from services.scheduler.core.requests import NO_RULES, Rules
from services.scheduler.core.resources import F64, Resource

_GAIN = 1e-12  # what a move must gain to count, beyond rounding


@dataclass(frozen=True, slots=True)
class Rebalance:
    moves: tuple[Move, ...]
    spread_before: float
    spread_after: float
    pool: Pool  # the pool given, with the moves made


def load_spread(pool: Pool, resource: Resource = Resource.CPU) -> float:
    """Most minus least utilisation of ``resource`` over the usable hosts."""
    util = pool.utilisation()[resource, pool.usable]
    return float(util.max() - util.min()) if len(util) > 1 else 0.0


def propose_rebalance(
    pool: Pool,
    threshold: float = 0.2,
    max_moves: int = 10,
    resource: Resource = Resource.CPU,
    rules: Mapping[str, Rules] | None = None,
) -> Rebalance:
    """Up to ``max_moves`` migrations that shrink the load spread; ``pool`` is not changed."""
    work = pool.copy()
    before = spread = load_spread(work, resource)
    moves: list[Move] = []
    while len(moves) < max_moves and spread > threshold:
        step = _best_move(work, resource, rules or {}, spread)
        if step is None:
            break
        name, target = step
        source = work.move_vm(name, target)
        moves.append(Move(name, work.names[source], work.names[target]))
        spread = load_spread(work, resource)
    return Rebalance(tuple(moves), before, spread, work)


def _best_move(
    pool: Pool, resource: Resource, rules: Mapping[str, Rules], spread: float
) -> tuple[str, int] | None:
    util = pool.utilisation()[resource]
    live = pool.usable
    source = int(np.argmax(np.where(live, util, -np.inf)))
    names = pool.vms.on_host(source)
    if not names:
        return None
    sizes = np.stack([pool.vms.get(name).size for name in names], axis=1)  # (4, vms)
    inv = pool.inv_capacity[resource]
    after_source = util[source] - sizes[resource] * inv[source]  # (vms,)
    after_target = util + sizes[resource][:, None] * inv  # (vms, hosts)

    others = live.copy()
    others[source] = False
    high = _extreme_of_others(np.where(others, util, -np.inf), largest=True)
    low = _extreme_of_others(np.where(others, util, np.inf), largest=False)
    top = np.maximum(np.maximum(high, after_source[:, None]), after_target)
    bottom = np.minimum(np.minimum(low, after_source[:, None]), after_target)
    new_spread = top - bottom
    evening = (after_source**2 - util[source] ** 2)[:, None] + after_target**2 - util**2

    allowed = np.empty_like(new_spread, dtype=np.bool_)
    for i, name in enumerate(names):
        allowed[i] = screen(pool, rules.get(name, NO_RULES)).mask & fits(pool.free, sizes[:, i])
    allowed[:, source] = False
    allowed &= (new_spread <= spread + _GAIN) & (evening < -_GAIN)
    if not allowed.any():
        return None
    vms, targets = np.nonzero(allowed)
    best = np.lexsort((evening[vms, targets], new_spread[vms, targets]))[0]
    return names[int(vms[best])], int(targets[best])


def _extreme_of_others(values: F64, *, largest: bool) -> F64:
    """For each position, the largest (or smallest) of all the other positions' values."""
    signed = values if largest else -values
    first = int(np.argmax(signed))
    rest = signed.copy()
    rest[first] = -np.inf
    others: F64 = np.where(np.arange(len(values)) == first, rest.max(), signed[first])
    return others if largest else -others
