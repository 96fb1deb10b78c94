"""HA spare: held back so the VMs of any K failed hosts restart, and never handed out by
the ``without(spare)`` view."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from services.scheduler.core import (
    HostState,
    Policy,
    Pool,
    Request,
    Resource,
    Resources,
    SpareUncoverable,
    ha_spare,
    place_many,
)
from tests.unit.scheduler.core.kit import apply, ask, hosts, vm

HOSTS = 6


def assorted_pool(seed: int, capacity: float = 40_000.0) -> Pool:
    rng = np.random.default_rng(seed)
    names = [f"h{i}" for i in range(HOSTS)]
    vms = [
        vm(
            f"{name}-{j}",
            name,
            float(rng.choice([1_000, 2_000, 3_000])),
            float(rng.choice([500, 2_500])),
        )
        for name in names
        for j in range(int(rng.integers(2, 6)))
    ]
    return Pool.build(hosts(*names, cpu=capacity, mem=capacity), vms)


def low_priority(seed: int, count: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [
        ask(f"low{i}", float(rng.integers(1, 8)) * 500.0, float(rng.integers(1, 8)) * 500.0)
        for i in range(count)
    ]


@pytest.mark.parametrize("failures", [1, 2])
def test_spare_lets_the_protected_vms_of_any_k_failed_hosts_restart(failures: int) -> None:
    """After a low-priority fill, the protected VMs of any K failed hosts all restart."""
    pool = assorted_pool(failures)
    protected = set(pool.vms)
    spare = ha_spare(pool, failures, protected)
    assert spare.covered
    full = pool.copy()
    apply(full, place_many(pool.without(spare), low_priority(7, 400), Policy.BINPACK))
    # The low VMs took all they could: no host has room for the smallest beyond its spare.
    assert np.all((full.free - spare.reserved)[:2].min(axis=0) < 500.0)

    for failed in itertools.combinations(range(HOSTS), failures):
        after = full.copy()
        lost = [(name, after.vms.get(name).size) for h in failed for name in after.vms.on_host(h)]
        for h in failed:
            after.set_state(h, HostState.FAILED)
        for name, _ in lost:
            after.remove_vm(name)
        restart = [Request(name, Resources.of(size)) for name, size in lost if name in protected]
        decisions = place_many(after, restart, Policy.BALANCED).decisions
        assert all(d.placed for d in decisions), failed


def test_without_spare_never_hands_out_the_spare() -> None:
    """Whatever is placed through the view, even degraded grants, every host keeps its spare."""
    pool = assorted_pool(3)
    spare = ha_spare(pool, 2)
    assert spare.slots_per_host > 0
    requests = [ask(f"low{i}", 9_000.0, 9_000.0, minimum=(100.0, 100.0)) for i in range(HOSTS * 10)]
    full = pool.copy()
    apply(full, place_many(pool.without(spare), requests, Policy.BINPACK))
    assert len(full.vms) > len(pool.vms)
    assert np.all(full.free >= spare.reserved - 1e-9)


def test_spare_slot_is_the_largest_vm_resource_by_resource() -> None:
    """The slot is the largest VM per resource; each host holds enough slots for K hosts' VMs."""
    pool = Pool.build(
        hosts("a", "b", "c"),
        [vm("cpu", "a", 4_000.0, 1_000.0), vm("mem", "b", 1_000.0, 6_000.0), vm("x", "b")],
    )
    spare = ha_spare(pool, 1)
    assert spare.slot == Resources(4_000.0, 6_000.0)
    assert spare.slots_per_host == 1  # ceil(2 VMs on b / 2 survivors)
    assert spare.on(pool, "c") == Resources(4_000.0, 6_000.0)
    assert not spare.covered  # b has 3,000 of memory free, not 6,000
    assert spare.shortfall[Resource.MEMORY].tolist() == [0.0, 3_000.0, 0.0]


def test_spare_where_a_host_lacks_it_leaves_the_view_nothing_free_there() -> None:
    """A host short of its spare offers nothing through the view."""
    pool = Pool.build(hosts("a", "b"), [vm("big", "a", 9_000.0), vm("v", "b", 5_000.0)])
    spare = ha_spare(pool, 1)
    view = pool.without(spare)
    assert view.free[Resource.CPU].tolist() == [0.0, 0.0]
    assert place_many(view, [ask("x", 100.0, 100.0)]).decisions[0].host is None


def test_spare_is_zero_without_failures_to_cover_or_vms_to_restart() -> None:
    """Covering no failure, or a pool without VMs, holds nothing back."""
    with_vms = Pool.build(hosts("a", "b"), [vm("v", "a")])
    empty = Pool.build(hosts("a", "b"))
    assert not ha_spare(with_vms, 0).reserved.any()
    assert not ha_spare(empty, 1).reserved.any()


def test_rejects_covering_as_many_failures_as_usable_hosts() -> None:
    """With K failures and K usable hosts there is nowhere to restart: refused."""
    pool = Pool.build(hosts("a", "b"))
    with pytest.raises(SpareUncoverable):
        ha_spare(pool, 2)
