"""The scoring policies, and should-rules weighed against them."""

from __future__ import annotations

import numpy as np

from services.scheduler.core import (
    SHOULD_WEIGHT,
    Affinity,
    Filter,
    Policy,
    Pool,
    Resource,
    Rules,
    decide,
    place_many,
)
from tests.unit.scheduler.core.kit import ask, host, hosts, vm


def test_binpack_fills_the_fullest_host_that_fits() -> None:
    """Binpack skips the host too full for the VM and takes the fullest of the rest."""
    pool = Pool.build(
        hosts("full", "busy", "light", "empty"),
        [vm("f", "full", 9_500.0, 9_500.0), vm("b", "busy", 6_000.0), vm("l", "light", 2_000.0)],
    )
    assert decide(pool, ask("x"), Policy.BINPACK).host == "busy"


def test_spread_picks_the_emptiest_host() -> None:
    """Without a group, spread takes the host with the fewest VMs, then the most free."""
    pool = Pool.build(
        hosts("a", "b", "c"),
        [vm("a1", "a"), vm("a2", "a"), vm("b1", "b", 3_000.0), vm("c1", "c", 1_000.0)],
    )
    assert decide(pool, ask("x"), Policy.SPREAD).host == "c"


def test_spread_picks_the_host_with_fewest_vms_of_the_group() -> None:
    """With a group, spread avoids the group's hosts even for a busier host."""
    pool = Pool.build(
        hosts("quiet", "busy"),
        [vm("w1", "quiet", group="web"), vm("db", "busy", 6_000.0, group="db")],
    )
    decision = decide(pool, ask("w2", group="web"), Policy.SPREAD)
    assert decision.host == "busy"


def test_balanced_picks_the_host_least_loaded_after_placement() -> None:
    """Balanced judges utilisation after placement: a big half-busy host beats a small one."""
    pool = Pool.build(
        [host("small", 10_000.0, 10_000.0), host("big", 40_000.0, 40_000.0)],
        [vm("s", "small", 2_000.0), vm("b", "big", 16_000.0)],
    )
    decision = decide(pool, ask("x", 4_000.0, 100.0), Policy.BALANCED)
    assert decision.host == "big"
    assert decision.score == 1.0 - 20_000.0 / 40_000.0


def test_balanced_keeps_utilisation_even() -> None:
    """VMs placed one by one on unequal hosts leave their utilisation within one VM's share."""
    pool = Pool.build(
        [
            host("s", 10_000.0, 10_000.0),
            host("m", 20_000.0, 20_000.0),
            host("l", 40_000.0, 40_000.0),
        ]
    )
    batch = place_many(pool, [ask(f"v{i}") for i in range(35)], Policy.BALANCED)
    cpu = batch.pool.utilisation()[Resource.CPU]
    assert all(d.placed for d in batch.decisions)
    assert np.ptp(cpu) <= 1_000.0 / 10_000.0


def test_binpack_uses_fewer_hosts_than_spread() -> None:
    """The same VMs take as few hosts as they need under binpack and every host under spread."""
    pool = Pool.build(hosts("a", "b", "c", "d"))
    requests = [ask(f"v{i}", 2_000.0, 2_000.0) for i in range(8)]
    packed = place_many(pool, requests, Policy.BINPACK).pool.vms.count
    spread = place_many(pool, requests, Policy.SPREAD).pool.vms.count
    assert np.count_nonzero(packed) == 2
    assert np.count_nonzero(spread) == 4


def test_should_host_affinity_outweighs_the_policy() -> None:
    """A should-affinity to the busier host wins over balanced's preference for the idle one."""
    pool = Pool.build(hosts("idle", "busy"), [vm("b", "busy", 7_000.0)])
    rules = Rules(host_affinity=Affinity(should=frozenset({"busy"})))
    assert decide(pool, ask("x")).host == "idle"
    decision = decide(pool, ask("x", rules=rules))
    assert decision.host == "busy"
    assert decision.score is not None
    assert decision.runners_up[0].score < decision.score - SHOULD_WEIGHT + 1.0


def test_should_vm_anti_affinity_outweighs_the_policy() -> None:
    """A should-anti-affinity moves a VM off the host binpack would otherwise choose."""
    pool = Pool.build(hosts("a", "b"), [vm("twin", "a", 5_000.0)])
    rules = Rules(vm_anti_affinity=Affinity(should=frozenset({"twin"})))
    assert decide(pool, ask("x"), Policy.BINPACK).host == "a"
    assert decide(pool, ask("x", rules=rules), Policy.BINPACK).host == "b"


def test_should_rule_gives_way_when_it_cannot_be_met() -> None:
    """A should-affinity to a full host is not a filter: the VM goes elsewhere."""
    pool = Pool.build(hosts("full", "free"), [vm("f", "full", 9_900.0)])
    rules = Rules(host_affinity=Affinity(should=frozenset({"full"})))
    decision = decide(pool, ask("x", rules=rules))
    assert decision.host == "free"
    assert decision.reason is None


def test_must_rule_holds_against_the_policy_and_refuses_when_unmet() -> None:
    """A must-affinity beats the policy; when its host is full the VM is refused."""
    pool = Pool.build(hosts("idle", "busy"), [vm("b", "busy", 7_000.0)])
    rules = Rules(host_affinity=Affinity(must=frozenset({"busy"})))
    assert decide(pool, ask("x", rules=rules)).host == "busy"
    refused = decide(pool, ask("y", 5_000.0, rules=rules))
    assert refused.host is None
    assert refused.reason is Filter.CAPACITY
