"""Rebalancing: greedy, bounded migrations that bring the hosts' load together."""

from __future__ import annotations

import numpy as np
import pytest

from services.scheduler.core import (
    Affinity,
    Pool,
    Resource,
    Rules,
    load_spread,
    propose_rebalance,
)
from tests.unit.scheduler.core.kit import hosts, vm


def loaded(*vms_per_host: int, size: float = 1_000.0) -> Pool:
    names = [f"h{i}" for i in range(len(vms_per_host))]
    vms = [
        vm(f"{n}-{j}", n, size)
        for n, count in zip(names, vms_per_host, strict=True)
        for j in range(count)
    ]
    return Pool.build(hosts(*names), vms)


def test_rebalance_reduces_the_spread() -> None:
    """Moves from the busiest hosts bring the CPU spread under the threshold."""
    pool = loaded(8, 2, 5)
    plan = propose_rebalance(pool, threshold=0.1)
    assert plan.spread_before == load_spread(pool) == pytest.approx(0.6)
    assert plan.spread_after == load_spread(plan.pool) <= 0.1
    assert all(m.source == "h0" for m in plan.moves[:1])
    assert load_spread(pool) == plan.spread_before  # the given pool is unchanged


def test_rebalance_proposes_nothing_under_the_threshold() -> None:
    """A spread at or below the threshold needs no migration."""
    plan = propose_rebalance(loaded(5, 3, 4), threshold=0.2)
    assert plan.moves == ()
    assert plan.spread_after == plan.spread_before


def test_rebalance_stops_at_max_moves() -> None:
    """The number of proposed moves is bounded."""
    plan = propose_rebalance(loaded(9, 0, 0, 0), threshold=0.0, max_moves=2)
    assert len(plan.moves) == 2
    assert plan.spread_after < plan.spread_before


def test_rebalance_works_through_hosts_tied_at_the_top() -> None:
    """With two hosts tied busiest, rebalancing relieves both and lowers the spread."""
    plan = propose_rebalance(loaded(8, 8, 0), threshold=0.3)
    assert plan.spread_after < plan.spread_before
    assert {m.source for m in plan.moves} == {"h0", "h1"}


def test_rebalance_never_over_commits_nor_breaks_a_must_rule() -> None:
    """Moves fit their targets, and a VM with anti-affinity to the idle host's VM stays off it."""
    pool = Pool.build(
        hosts("busy", "idle", "mid"),
        [
            vm("big", "busy", 6_000.0),
            vm("x", "busy", 3_000.0),
            vm("y", "idle"),
            vm("m", "mid", 4_000.0),
        ],
    )
    rules = {"x": Rules(vm_anti_affinity=Affinity(must=frozenset({"y"})))}
    plan = propose_rebalance(pool, threshold=0.0, rules=rules)
    assert plan.moves
    assert np.all(plan.pool.free >= 0)
    assert plan.pool.names[plan.pool.vms.host_of("x") or 0] != "idle"
    assert plan.spread_after < plan.spread_before


def test_rebalance_weighs_the_resource_asked_for() -> None:
    """On memory, the spread is memory's and moves even memory out."""
    pool = Pool.build(
        hosts("a", "b"), [vm("m1", "a", 100.0, 4_000.0), vm("m2", "a", 100.0, 4_000.0)]
    )
    plan = propose_rebalance(pool, threshold=0.1, resource=Resource.MEMORY)
    assert plan.spread_before == pytest.approx(0.8)
    assert plan.spread_after == pytest.approx(0.0)
