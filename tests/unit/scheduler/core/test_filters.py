"""The filters: each takes hosts out and says how many; a refusal names the one that
left no host."""

from __future__ import annotations

import pytest

from services.scheduler.core import (
    Affinity,
    Filter,
    HostState,
    Pool,
    Request,
    Resources,
    Rules,
    decide,
)
from tests.unit.scheduler.core.kit import ask, host, hosts, removed, vm


def test_state_filter_removes_hosts_in_maintenance_and_failed() -> None:
    """Only usable hosts take new VMs; the state filter counts the others."""
    pool = Pool.build(
        [
            host("a", state=HostState.MAINTENANCE),
            host("b", state=HostState.FAILED),
            host("c"),
        ]
    )
    decision = decide(pool, ask("x"))
    assert decision.host == "c"
    assert removed(decision)["state"] == 2


def test_capacity_filter_removes_hosts_short_of_any_resource() -> None:
    """A host short of CPU, memory, network or storage is out; only the roomy one is left."""
    pool = Pool.build(
        [
            host("cpu", cpu=500.0),
            host("mem", mem=500.0),
            host("net", net=50.0),
            host("disk", storage=50.0),
            host("roomy"),
        ]
    )
    request = Request("x", Resources(1_000.0, 1_000.0, 100.0, 100.0))
    decision = decide(pool, request)
    assert decision.host == "roomy"
    assert removed(decision)["capacity"] == 4
    assert decision.candidates == 1


def test_host_must_affinity_keeps_only_the_named_hosts() -> None:
    """A host must-affinity leaves only the named hosts in the running."""
    pool = Pool.build(hosts("a", "b", "c", "d"))
    rules = Rules(host_affinity=Affinity(must=frozenset({"b", "d"})))
    decision = decide(pool, ask("x", rules=rules))
    assert decision.host in {"b", "d"}
    assert removed(decision)["host_affinity"] == 2


def test_host_must_anti_affinity_removes_the_named_hosts() -> None:
    """A host must-anti-affinity takes the named hosts out."""
    pool = Pool.build(hosts("a", "b", "c"))
    rules = Rules(host_anti_affinity=Affinity(must=frozenset({"a", "b"})))
    decision = decide(pool, ask("x", rules=rules))
    assert decision.host == "c"
    assert removed(decision)["host_anti_affinity"] == 2


def test_vm_must_affinity_places_beside_the_partner() -> None:
    """A VM must-affinity keeps only the host of the partner VM, even if it is the busiest."""
    pool = Pool.build(hosts("a", "b", "c"), [vm("db", "b", cpu=8_000.0)])
    rules = Rules(vm_affinity=Affinity(must=frozenset({"db"})))
    decision = decide(pool, ask("app", rules=rules))
    assert decision.host == "b"
    assert removed(decision)["vm_affinity"] == 2


def test_vm_must_anti_affinity_avoids_the_partners_hosts() -> None:
    """A VM must-anti-affinity takes out every host that holds one of the named VMs."""
    pool = Pool.build(hosts("a", "b", "c"), [vm("r1", "a"), vm("r2", "c")])
    rules = Rules(vm_anti_affinity=Affinity(must=frozenset({"r1", "r2"})))
    decision = decide(pool, ask("r3", rules=rules))
    assert decision.host == "b"
    assert removed(decision)["vm_anti_affinity"] == 2


def test_vm_must_affinity_to_an_unplaced_vm_constrains_nothing() -> None:
    """The first VM of a pair goes anywhere: affinity to a VM not placed yet removes no host."""
    pool = Pool.build(hosts("a", "b"))
    rules = Rules(vm_affinity=Affinity(must=frozenset({"not-yet"})))
    decision = decide(pool, ask("x", rules=rules))
    assert decision.placed
    assert removed(decision)["vm_affinity"] == 0


def test_vm_must_affinity_to_partners_on_different_hosts_leaves_no_host() -> None:
    """Being beside each of two VMs that live apart is impossible: refused by vm_affinity."""
    pool = Pool.build(hosts("a", "b"), [vm("p", "a"), vm("q", "b")])
    rules = Rules(vm_affinity=Affinity(must=frozenset({"p", "q"})))
    decision = decide(pool, ask("x", rules=rules))
    assert decision.host is None
    assert decision.reason is Filter.VM_AFFINITY


@pytest.mark.parametrize(
    ("rules", "size", "reason"),
    [
        (Rules(host_affinity=Affinity(must=frozenset({"gone"}))), 1_000.0, Filter.HOST_AFFINITY),
        (
            Rules(host_anti_affinity=Affinity(must=frozenset({"a", "b"}))),
            1_000.0,
            Filter.HOST_ANTI_AFFINITY,
        ),
        (
            Rules(vm_anti_affinity=Affinity(must=frozenset({"p", "q"}))),
            1_000.0,
            Filter.VM_ANTI_AFFINITY,
        ),
        (Rules(), 50_000.0, Filter.CAPACITY),
    ],
    ids=["host-affinity", "host-anti-affinity", "vm-anti-affinity", "capacity"],
)
def test_refusal_names_the_filter_that_left_no_host(
    rules: Rules, size: float, reason: Filter
) -> None:
    """A refused decision has no host, no grant and the filter that emptied the set."""
    pool = Pool.build(
        [*hosts("a", "b"), host("off", state=HostState.FAILED)], [vm("p", "a"), vm("q", "b")]
    )
    decision = decide(pool, ask("x", cpu=size, rules=rules))
    assert (decision.host, decision.row, decision.granted, decision.score) == (None,) * 4
    assert decision.reason is reason
    assert removed(decision)["state"] == 1


def test_refusal_on_a_pool_with_no_usable_host_names_the_state_filter() -> None:
    """With every host failed, the state filter is the one that left nothing."""
    pool = Pool.build([host("a", state=HostState.FAILED)])
    assert decide(pool, ask("x")).reason is Filter.STATE
