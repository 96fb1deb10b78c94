"""Weighted max-min fair share with reservations: the rule every resource is shared out by."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.hosts.resources import share_out


def share(
    capacity: float,
    demand: list[float],
    floor: list[float] | None = None,
    weight: list[float] | None = None,
) -> list[float]:
    n = len(demand)
    grant = share_out(
        np.zeros(n, dtype=np.intp),
        np.array([capacity]),
        np.array(demand, dtype=np.float64),
        np.array(floor or [0.0] * n, dtype=np.float64),
        np.array(weight or [1.0] * n, dtype=np.float64),
    )
    return [float(g) for g in grant]


def reference(
    capacity: float, demand: list[float], floor: list[float], weight: list[float]
) -> list[float]:
    """The same rule by bisection on the water level, one group, plain Python."""
    if sum(demand) <= capacity:
        return list(demand)
    fl = [min(f, d) for f, d in zip(floor, demand, strict=True)]
    if sum(fl) > capacity:
        fl = [f * capacity / sum(fl) for f in fl]

    def grants(level: float) -> list[float]:
        return [min(d, max(f, w * level)) for d, f, w in zip(demand, fl, weight, strict=True)]

    lo, hi = 0.0, max(d / w for d, w in zip(demand, weight, strict=True))
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(grants(mid)) < capacity else (lo, mid)
    return grants(hi)


def test_share_out_grants_every_demand_when_it_fits() -> None:
    """Below capacity, shares and reservations change nothing: every demand is granted."""
    assert share(10.0, [1.0, 2.0, 3.0], weight=[1.0, 5.0, 1.0]) == [1.0, 2.0, 3.0]


def test_equal_weights_split_contended_capacity_equally() -> None:
    """Two equal VMs that both want more than half get half each."""
    assert share(10.0, [8.0, 9.0]) == pytest.approx([5.0, 5.0])


def test_vm_under_its_fair_share_gets_all_of_it_and_the_rest_is_redistributed() -> None:
    """Max-min: a VM wanting less than its fair share keeps all it wants; others split the rest."""
    assert share(9.0, [1.0, 8.0, 8.0]) == pytest.approx([1.0, 4.0, 4.0])


def test_weights_split_capacity_in_proportion() -> None:
    """With shares 1:3 and both saturating, capacity splits 1:3."""
    assert share(8.0, [8.0, 8.0], weight=[1.0, 3.0]) == pytest.approx([2.0, 6.0])


def test_reservations_are_honoured_before_shares() -> None:
    """A reservation is met first, even against a VM with far more shares."""
    grant = share(10.0, [10.0, 10.0], floor=[7.0, 0.0], weight=[1.0, 100.0])
    assert grant[0] == pytest.approx(7.0)
    assert grant[1] == pytest.approx(3.0)


def test_reservation_never_grants_more_than_the_demand() -> None:
    """A VM reserving more than it wants gets only what it wants; the rest goes to others."""
    assert share(10.0, [2.0, 20.0], floor=[6.0, 0.0]) == pytest.approx([2.0, 8.0])


def test_reservations_over_capacity_are_scaled_down_to_fit() -> None:
    """Reservations that together exceed capacity are scaled proportionally, never exceeded."""
    assert share(6.0, [10.0, 10.0], floor=[8.0, 4.0]) == pytest.approx([4.0, 2.0])


def test_groups_are_shared_out_independently() -> None:
    """Each host's capacity is shared among its own VMs only, whatever the row order."""
    grant = share_out(
        np.array([1, 0, 1, 0], dtype=np.intp),
        np.array([4.0, 100.0]),
        np.array([10.0, 10.0, 10.0, 1.0]),
        np.zeros(4),
        np.ones(4),
    )
    assert grant.tolist() == pytest.approx([10.0, 3.0, 10.0, 1.0])


amounts = st.floats(0.0, 1_000.0, allow_nan=False)
rows = st.lists(
    st.tuples(st.integers(0, 2), amounts, amounts, st.floats(0.1, 100.0)), min_size=1, max_size=12
)


@settings(max_examples=150, deadline=None)
@given(rows=rows, capacity=st.lists(amounts, min_size=3, max_size=3))
def test_share_out_matches_the_reference_water_fill(
    rows: list[tuple[int, float, float, float]], capacity: list[float]
) -> None:
    """For any demands, floors, weights and capacities, grants match a bisection reference."""
    group, demand, floor, weight = (list(c) for c in zip(*rows, strict=True))
    grant = share_out(
        np.array(group, dtype=np.intp),
        np.array(capacity),
        np.array(demand),
        np.array(floor),
        np.array(weight),
    )
    for h, cap in enumerate(capacity):
        mine = [i for i, g in enumerate(group) if g == h]
        if not mine:
            continue
        want = reference(
            cap, [demand[i] for i in mine], [floor[i] for i in mine], [weight[i] for i in mine]
        )
        assert [grant[i] for i in mine] == pytest.approx(want, rel=1e-6, abs=1e-6)
        assert sum(grant[i] for i in mine) <= cap * (1 + 1e-9) + 1e-9
        assert all(0.0 <= grant[i] <= demand[i] for i in mine)
