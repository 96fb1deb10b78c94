"""Properties over random pools and requests: nothing ever over-commits a host, grants
stay between minimum and desired, and must-rules hold."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.core import (
    Affinity,
    Host,
    HostState,
    Policy,
    Pool,
    Request,
    Resources,
    Rules,
    place_many,
    plan_evacuation,
    propose_rebalance,
)
from services.scheduler.core.errors import MaintenanceRefused

amount = st.integers(0, 20).map(lambda k: k * 500.0)
positive = st.integers(1, 20).map(lambda k: k * 500.0)
resources = st.builds(Resources, positive, positive, amount, amount)


@st.composite
def pools(draw: st.DrawFn) -> Pool:
    count = draw(st.integers(1, 5))
    states = st.sampled_from([HostState.USABLE] * 4 + [HostState.MAINTENANCE, HostState.FAILED])
    hosts = [
        Host(f"h{i}", Resources(*(draw(amount) * 2 for _ in range(4))), draw(states))
        for i in range(count)
    ]
    return Pool.build(hosts)


@st.composite
def requests(draw: st.DrawFn, hosts: int) -> list[Request]:
    made: list[Request] = []
    for i in range(draw(st.integers(0, 25))):
        desired = draw(resources)
        minimum = None
        if draw(st.booleans()):
            low = [draw(st.floats(0.0, 1.0)) * x for x in astuple(desired)]
            minimum = Resources(max(low[0], 1.0), max(low[1], 1.0), low[2], low[3])
        apart = frozenset(draw(st.sets(st.sampled_from([r.vm for r in made]))) if made else ())
        prefer = frozenset(draw(st.sets(st.sampled_from([f"h{j}" for j in range(hosts)]))))
        rules = Rules(vm_anti_affinity=Affinity(must=apart), host_affinity=Affinity(should=prefer))
        made.append(Request(f"v{i}", desired, minimum, draw(st.sampled_from(["", "g"])), rules))
    return made


@settings(max_examples=150, deadline=None)
@given(data=st.data(), pool=pools(), policy=st.sampled_from(Policy))
def test_random_placements_never_over_commit_any_resource_of_any_host(
    data: st.DataObject, pool: Pool, policy: Policy
) -> None:
    """Per host and resource, a random batch's grants never exceed the capacity."""
    batch = place_many(pool, data.draw(requests(len(pool))), policy)
    granted = np.zeros_like(pool.capacity)
    for decision in batch.decisions:
        if decision.row is None or decision.granted is None:
            assert decision.reason is not None
            continue
        granted[:, decision.row] += decision.granted.vector()
        assert pool.usable[decision.row]
    assert np.all(granted <= pool.capacity)
    assert np.all(batch.pool.free >= 0.0)
    assert np.allclose(batch.pool.free, pool.capacity - granted)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), pool=pools())
def test_grants_stay_between_minimum_and_desired_and_must_rules_hold(
    data: st.DataObject, pool: Pool
) -> None:
    """Grants lie in [minimum, desired], below desired only when flagged, and keep must-rules."""
    asked = data.draw(requests(len(pool)))
    batch = place_many(pool, asked, Policy.BINPACK)
    where = {d.vm: d.host for d in batch.decisions}
    for request, decision in zip(asked, batch.decisions, strict=True):
        if decision.granted is None:
            continue
        grant = decision.granted.vector()
        desired, minimum = request.sizes()
        assert np.all(minimum <= grant)
        assert np.all(grant <= desired)
        assert decision.degraded == (not np.array_equal(grant, desired))
        assert all(where[other] != decision.host for other in request.rules.vm_anti_affinity.must)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), pool=pools())
def test_rebalance_and_evacuation_never_over_commit(data: st.DataObject, pool: Pool) -> None:
    """Rebalancing never widens the spread; neither it nor an evacuation over-commits."""
    placed = place_many(pool, data.draw(requests(len(pool))), Policy.BINPACK).pool
    plan = propose_rebalance(placed, threshold=0.0, max_moves=5)
    assert plan.spread_after <= plan.spread_before + 1e-12
    assert np.all(plan.pool.free >= 0.0)
    host = data.draw(st.sampled_from(placed.names))
    try:
        evacuation = plan_evacuation(placed, host)
    except MaintenanceRefused:
        return
    assert np.all(evacuation.pool.free >= 0.0)
    assert evacuation.pool.vms.on_host(placed.row(host)) == []
