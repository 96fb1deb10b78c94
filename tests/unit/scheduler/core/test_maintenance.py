"""Maintenance: the hosts cheapest to empty, and a plan that empties one or is refused."""

from __future__ import annotations

import pytest

from services.scheduler.core import (
    Affinity,
    EvacuationDoesNotFit,
    HostState,
    LastUsableHost,
    MaintenanceRefused,
    Pool,
    Rules,
    cheapest_to_evacuate,
    plan_evacuation,
)
from tests.unit.scheduler.core.kit import cpu_free, host, hosts, vm


def test_cheapest_to_evacuate_ranks_fewest_then_lightest_vms_first() -> None:
    """Usable hosts only, fewest VMs first, the lighter load first among equals."""
    pool = Pool.build(
        [*hosts("three", "heavy", "light", "empty"), host("m", state=HostState.MAINTENANCE)],
        [
            *(vm(f"t{i}", "three") for i in range(3)),
            vm("h", "heavy", 6_000.0, 6_000.0),
            vm("l", "light", 1_000.0, 1_000.0),
        ],
    )
    costs = cheapest_to_evacuate(pool)
    assert [c.host for c in costs] == ["empty", "light", "heavy", "three"]
    assert [c.vms for c in costs] == [0, 1, 1, 3]
    assert costs[1].load == pytest.approx(0.05)
    assert [c.host for c in cheapest_to_evacuate(pool, 2)] == ["empty", "light"]


def test_evacuation_plan_empties_the_host_and_puts_it_in_maintenance() -> None:
    """Every VM moves to another usable host; the planned pool has the host empty."""
    pool = Pool.build(
        [*hosts("a", "b", "c"), host("off", state=HostState.FAILED)],
        [vm("v1", "a", 3_000.0), vm("v2", "a", 2_000.0), vm("v3", "a", 4_000.0), vm("w", "b")],
    )
    plan = plan_evacuation(pool, "a")
    assert sorted(m.vm for m in plan.moves) == ["v1", "v2", "v3"]
    assert all(m.source == "a" and m.target in {"b", "c"} for m in plan.moves)
    assert plan.pool.vms.on_host(0) == []
    assert plan.pool.state_of(0) is HostState.MAINTENANCE
    assert cpu_free(plan.pool, "a") == 10_000.0
    assert cpu_free(plan.pool, "b") + cpu_free(plan.pool, "c") == 20_000.0 - 10_000.0
    assert [d.host for d in plan.decisions] == [m.target for m in plan.moves]
    assert pool.vms.on_host(0) == ["v1", "v2", "v3"]
    assert pool.state_of(0) is HostState.USABLE


def test_evacuation_moves_the_largest_vms_first() -> None:
    """The hardest VMs to fit move while there is the most room."""
    pool = Pool.build(
        hosts("a", "b", "c"), [vm("s", "a", 1_000.0), vm("l", "a", 5_000.0), vm("m", "a", 3_000.0)]
    )
    assert [m.vm for m in plan_evacuation(pool, "a").moves] == ["l", "m", "s"]


def test_evacuation_refuses_the_last_usable_host() -> None:
    """With no other usable host the VMs would have nowhere to go."""
    pool = Pool.build(
        [host("a"), host("b", state=HostState.MAINTENANCE), host("c", state=HostState.FAILED)]
    )
    with pytest.raises(LastUsableHost):
        plan_evacuation(pool, "a")


def test_evacuation_refuses_when_the_vms_do_not_all_fit_elsewhere() -> None:
    """When some VM fits on no other host, the plan is refused and names it."""
    pool = Pool.build(hosts("a", "b"), [vm("big", "a", 6_000.0), vm("b1", "b", 5_000.0)])
    with pytest.raises(EvacuationDoesNotFit, match="big"):
        plan_evacuation(pool, "a")


def test_evacuation_refuses_a_failed_host() -> None:
    """A failed host's VMs restart through HA, not through maintenance."""
    pool = Pool.build([host("a", state=HostState.FAILED), host("b")])
    with pytest.raises(MaintenanceRefused):
        plan_evacuation(pool, "a")


def test_evacuation_keeps_the_vms_must_rules() -> None:
    """Evacuated VMs keep their must-anti-affinity, and a must-affinity pair lands together."""
    pool = Pool.build(
        hosts("a", "b", "c", "d"),
        [vm("x", "a"), vm("y", "b", 5_000.0), vm("p", "a"), vm("q", "a"), vm("z", "c", 3_000.0)],
    )
    rules = {
        "x": Rules(vm_anti_affinity=Affinity(must=frozenset({"y"}))),
        "p": Rules(vm_affinity=Affinity(must=frozenset({"q"}))),
        "q": Rules(vm_affinity=Affinity(must=frozenset({"p"}))),
    }
    targets = {m.vm: m.target for m in plan_evacuation(pool, "a", rules=rules).moves}
    assert targets["x"] != "b"
    assert targets["p"] == targets["q"]
