"""The pool snapshot: built from plain inputs, updated in place, copied on demand."""

from __future__ import annotations

import numpy as np
import pytest

from services.scheduler.core import (
    HostState,
    InsufficientCapacity,
    InvalidPool,
    PlacedVm,
    Pool,
    Resource,
    Resources,
    UnknownName,
)
from tests.unit.scheduler.core.kit import cpu_free, host, hosts, vm


def test_build_takes_placed_vms_and_held_capacity_off_free() -> None:
    """Free is capacity minus the VMs placed there and what is held for other work."""
    pool = Pool.build(
        [host("a", net=1_000.0), host("b")],
        [vm("v", "a", 3_000.0, 2_000.0), vm("w", "a", 1_000.0, 500.0)],
        held={"b": Resources(0.0, 0.0, net_mbps=400.0)},
    )
    assert pool.free_of(0) == Resources(6_000.0, 7_500.0, 1_000.0, 1_000.0)
    assert pool.free_of(1) == Resources(10_000.0, 10_000.0, 600.0, 1_000.0)
    assert pool.free.shape == (4, 2)
    assert pool.vms.count.tolist() == [2, 0]
    assert pool.utilisation()[Resource.CPU].tolist() == [0.4, 0.0]


def test_reserve_changes_free_in_place_and_refuses_to_over_commit() -> None:
    """reserve takes from free in place; more than is free raises InsufficientCapacity."""
    pool = Pool.build(hosts("a"))
    pool.reserve(0, Resources(4_000.0, 1_000.0).vector())
    assert cpu_free(pool, "a") == 6_000.0
    with pytest.raises(InsufficientCapacity):
        pool.reserve(0, Resources(6_001.0, 1.0).vector())
    assert cpu_free(pool, "a") == 6_000.0


def test_copy_is_independent_of_the_original() -> None:
    """Changing a copy's free capacity, VMs or states leaves the original alone."""
    pool = Pool.build(hosts("a", "b"), [vm("v", "a")])
    twin = pool.copy()
    twin.add_vm("w", 1, Resources(1_000.0, 1_000.0).vector())
    twin.move_vm("v", 1)
    twin.set_state(0, HostState.FAILED)
    assert pool.vms.host_of("v") == 0
    assert "w" not in pool.vms
    assert pool.usable.all()
    assert cpu_free(pool, "b") == 10_000.0
    assert cpu_free(twin, "b") == 8_000.0


def test_move_vm_carries_its_size_and_group() -> None:
    """A moved VM frees its source and takes the same size on its target."""
    pool = Pool.build(hosts("a", "b"), [vm("v", "a", 3_000.0, group="web")])
    assert pool.move_vm("v", 1) == 0
    assert (cpu_free(pool, "a"), cpu_free(pool, "b")) == (10_000.0, 7_000.0)
    assert pool.vms.group_count("web").tolist() == [0, 1]


def test_rejects_duplicate_hosts_vms_on_unknown_hosts_and_bad_sizes() -> None:
    """The pool refuses inputs it cannot make sense of with InvalidPool."""
    with pytest.raises(InvalidPool):
        Pool.build(hosts("a", "a"))
    with pytest.raises(InvalidPool):
        Pool.build(hosts("a"), [vm("v", "nowhere")])
    with pytest.raises(InvalidPool):
        Pool.build(hosts("a"), [vm("v", "a"), vm("v", "a")])
    with pytest.raises(InvalidPool):
        PlacedVm("v", "a", Resources(0.0, 1.0))
    with pytest.raises(InvalidPool):
        host("a", cpu=-1.0)


def test_unknown_names_raise_unknown_name() -> None:
    """Asking for a host or VM the pool does not hold raises UnknownName."""
    pool = Pool.build(hosts("a"))
    with pytest.raises(UnknownName):
        pool.row("b")
    with pytest.raises(UnknownName):
        pool.remove_vm("v")


def test_an_empty_pool_has_empty_arrays() -> None:
    """A pool of no hosts is valid and has (4, 0) arrays."""
    pool = Pool.build([])
    assert pool.free.shape == (4, 0)
    assert np.count_nonzero(pool.usable) == 0
