"""Degraded placement: with no room for the desired size, less on the best host, never
below the stated minimum, and flagged."""

from __future__ import annotations

from services.scheduler.core import Filter, Policy, Pool, Resources, decide
from tests.unit.scheduler.core.kit import ask, hosts, vm


def test_places_degraded_on_the_host_that_can_give_the_most() -> None:
    """No host has the desired 8,000 MHz: the one with 5,000 free gets the VM at 5,000."""
    pool = Pool.build(hosts("a", "b"), [vm("x", "a", 7_000.0), vm("y", "b", 5_000.0)])
    decision = decide(pool, ask("v", 8_000.0, 2_000.0, minimum=(2_000.0, 2_000.0)))
    assert decision.host == "b"
    assert decision.degraded
    assert decision.granted == Resources(5_000.0, 2_000.0)


def test_degraded_grant_is_never_below_the_minimum() -> None:
    """A host short of the minimum in any resource is out; the grant is never below it."""
    pool = Pool.build(hosts("a", "b"), [vm("x", "a", 8_000.0), vm("y", "b", 2_000.0, 9_600.0)])
    decision = decide(pool, ask("v", 6_000.0, 800.0, minimum=(1_500.0, 500.0)))
    assert decision.host == "a"
    assert decision.degraded
    assert decision.granted == Resources(2_000.0, 800.0)


def test_refuses_when_no_host_has_the_minimum() -> None:
    """Below the minimum nothing is granted: the capacity filter refuses the VM."""
    pool = Pool.build(hosts("a"), [vm("x", "a", 9_000.0)])
    decision = decide(pool, ask("v", 4_000.0, minimum=(2_000.0, 1_000.0)))
    assert decision.host is None
    assert decision.reason is Filter.CAPACITY
    assert not decision.degraded


def test_full_size_wins_whenever_any_host_fits_desired() -> None:
    """Binpack would prefer the fuller host, but one host has room for the whole VM."""
    pool = Pool.build(hosts("full", "free"), [vm("x", "full", 8_000.0)])
    decision = decide(pool, ask("v", 4_000.0, minimum=(1_000.0, 1_000.0)), Policy.BINPACK)
    assert decision.host == "free"
    assert not decision.degraded
    assert decision.granted == Resources(4_000.0, 1_000.0)


def test_request_without_minimum_is_never_degraded() -> None:
    """Without a stated minimum the desired size is also the minimum."""
    pool = Pool.build(hosts("a"), [vm("x", "a", 8_000.0)])
    decision = decide(pool, ask("v", 4_000.0))
    assert decision.host is None
    assert not decision.degraded
