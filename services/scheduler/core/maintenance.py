"""Maintenance mode: which hosts are cheapest to empty, and a plan that empties one.

A plan moves the host's VMs largest first (the hardest to fit go while there is most
room), each through the same filter and score as a new placement, on a copy of the
pool without the host, reserving as it goes. The host's VMs are lifted off together
before the first is placed, so two of them with a must-affinity move as a pair: the
first goes anywhere and the second follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.scheduler.core.errors import EvacuationDoesNotFit, LastUsableHost, MaintenanceRefused
from services.scheduler.core.inventory import HostState
from services.scheduler.core.moves import Move
from services.scheduler.core.placement import Decision, commit, decide
from services.scheduler.core.pool import Pool
from services.scheduler.core.requests import NO_RULES, Request, Rules
from services.scheduler.core.resources import Resources
from services.scheduler.core.scoring import Policy


@dataclass(frozen=True, slots=True)
class EvacuationCost:
    host: str
    vms: int
    load: float  # mean share of the host's resources its VMs hold


@dataclass(frozen=True, slots=True)
class Evacuation:
    host: str
    moves: tuple[Move, ...]
    decisions: tuple[Decision, ...]  # one per move, to explain each destination
    pool: Pool  # the host in maintenance and empty, its VMs on their targets


def cheapest_to_evacuate(pool: Pool, count: int | None = None) -> tuple[EvacuationCost, ...]:
    """Usable hosts, cheapest to empty first: fewest VMs, then the lightest load."""
    rows = np.flatnonzero(pool.usable)
    vms = pool.vms.count[rows]
    held = np.zeros(len(pool))
    table = pool.vms.table()
    np.add.at(held, table.host, (table.size * pool.inv_capacity[:, table.host]).mean(axis=0))
    load = held[rows]
    order = np.lexsort((rows, load, vms))[:count]
    return tuple(
        EvacuationCost(pool.names[int(rows[i])], int(vms[i]), float(load[i])) for i in order
    )


def plan_evacuation(
    pool: Pool,
    host: str,
    policy: Policy = Policy.BALANCED,
    rules: Mapping[str, Rules] | None = None,
) -> Evacuation:
    """Migrations that empty ``host`` for maintenance; ``rules`` are the VMs' own rules.

    Raises ``LastUsableHost`` when no other host is usable and ``EvacuationDoesNotFit``
    when some VM has nowhere to go; ``pool`` is never changed."""
    row = pool.row(host)
    if pool.state_of(row) is HostState.FAILED:
        raise MaintenanceRefused(f"host {host} has failed: its VMs restart through HA")
    if not np.any(np.delete(pool.usable, row)):
        raise LastUsableHost(f"host {host} is the last usable host")
    work = pool.copy()
    work.set_state(row, HostState.MAINTENANCE)
    leaving = [(name, work.vms.get(name)) for name in work.vms.on_host(row)]
    inv = pool.inv_capacity[:, row]
    leaving.sort(key=lambda item: -float((item[1].size * inv).max()))
    for name, _ in leaving:
        work.remove_vm(name)

    moves, decisions = [], []
    for name, vm in leaving:
        request = Request(
            name, Resources.of(vm.size), group=vm.group, rules=(rules or {}).get(name, NO_RULES)
        )
        decision = decide(work, request, policy)
        if decision.host is None:
            raise EvacuationDoesNotFit(
                f"host {host}: VM {name} fits nowhere else (the {decision.reason} filter)"
            )
        commit(work, request, decision)
        moves.append(Move(name, host, decision.host))
        decisions.append(decision)
    return Evacuation(host, tuple(moves), tuple(decisions), work)
