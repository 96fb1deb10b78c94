"""What a decision carries to explain itself, and how batches reserve as they go."""

from __future__ import annotations

import numpy as np

from services.scheduler.core import (
    Affinity,
    Candidate,
    HostState,
    Policy,
    Pool,
    Rules,
    decide,
    place_many,
)
from tests.unit.scheduler.core.kit import ask, cpu_free, host, hosts, removed, vm


def test_decision_lists_three_runners_up_best_first() -> None:
    """Runners-up are the next three hosts by score, best first, without the chosen one."""
    pool = Pool.build(
        hosts("a", "b", "c", "d", "e"),
        [
            vm("b1", "b", 1_000.0),
            vm("c1", "c", 2_000.0),
            vm("d1", "d", 3_000.0),
            vm("e1", "e", 4_000.0),
        ],
    )
    decision = decide(pool, ask("x"), Policy.BALANCED)
    assert decision.host == "a"
    assert decision.score is not None
    assert [c.host for c in decision.runners_up] == ["b", "c", "d"]
    scores = [decision.score, *(c.score for c in decision.runners_up)]
    assert scores == sorted(scores, reverse=True)
    assert decision.runners_up[0] == Candidate("b", 1.0 - 2_000.0 / 10_000.0)


def test_decision_with_few_candidates_lists_fewer_runners_up() -> None:
    """With two hosts left there is one runner-up."""
    pool = Pool.build(hosts("a", "b"))
    assert len(decide(pool, ask("x")).runners_up) == 1


def test_decision_counts_every_filters_removals_and_the_candidates_left() -> None:
    """Each filter's count is what it removed from the hosts the earlier ones left."""
    pool = Pool.build(
        [
            *hosts("a", "b", "c", "d", "e", "f"),
            host("m", state=HostState.MAINTENANCE),
            host("small", cpu=500.0),
        ],
        [vm("p", "c"), vm("q", "d")],
    )
    rules = Rules(
        host_anti_affinity=Affinity(must=frozenset({"e", "f"})),
        vm_anti_affinity=Affinity(must=frozenset({"p", "q"})),
    )
    decision = decide(pool, ask("x", rules=rules))
    assert removed(decision) == {
        "state": 1,
        "host_affinity": 0,
        "host_anti_affinity": 2,
        "vm_affinity": 0,
        "vm_anti_affinity": 2,
        "capacity": 1,
    }
    assert decision.candidates == 2
    assert decision.host in {"a", "b"}


def test_ties_go_to_the_first_host() -> None:
    """Among equal scores the host listed first wins, so decisions repeat exactly."""
    pool = Pool.build(hosts("a", "b", "c"))
    for policy in Policy:
        assert decide(pool, ask("x"), policy).host == "a"


def test_decide_leaves_the_pool_unchanged() -> None:
    """Deciding reserves nothing."""
    pool = Pool.build(hosts("a"))
    decide(pool, ask("x"))
    assert cpu_free(pool, "a") == 10_000.0
    assert "x" not in pool.vms


def test_place_many_reserves_as_it_goes_and_leaves_the_given_pool_unchanged() -> None:
    """Each placement sees the earlier ones; the given pool stays as it was."""
    pool = Pool.build(hosts("a", "b"))
    batch = place_many(pool, [ask(f"v{i}", 4_000.0) for i in range(5)])
    assert [d.host for d in batch.decisions] == ["a", "b", "a", "b", None]
    assert cpu_free(batch.pool, "a") == cpu_free(batch.pool, "b") == 2_000.0
    assert batch.pool.vms.host_of("v2") == 0
    assert np.array_equal(pool.free, Pool.build(hosts("a", "b")).free)
    assert len(pool.vms) == 0


def test_place_many_lets_a_request_follow_a_vm_placed_earlier_in_the_batch() -> None:
    """Affinity and anti-affinity see VMs placed by earlier requests of the same batch."""
    pool = Pool.build(hosts("a", "b", "c"))
    batch = place_many(
        pool,
        [
            ask("db"),
            ask("app", rules=Rules(vm_affinity=Affinity(must=frozenset({"db"})))),
            ask("db2", rules=Rules(vm_anti_affinity=Affinity(must=frozenset({"db"})))),
        ],
        Policy.SPREAD,
    )
    db, app, db2 = batch.decisions
    assert app.host == db.host
    assert db2.host != db.host
