"""Requests are checked when made: contradictory rules and absurd sizes are refused with
typed errors under the package's one root."""

from __future__ import annotations

import math

import pytest

from services.scheduler.core import (
    AbsurdRequest,
    Affinity,
    ContradictoryRules,
    EvacuationDoesNotFit,
    InsufficientCapacity,
    InvalidPool,
    LastUsableHost,
    MaintenanceRefused,
    Pool,
    Request,
    Resources,
    Rules,
    SchedulerError,
    SpareUncoverable,
    UnknownName,
    place_many,
)
from tests.unit.scheduler.core.kit import ask, hosts, vm


def names(*items: str) -> frozenset[str]:
    return frozenset(items)


def test_rejects_must_affinity_and_must_anti_affinity_to_the_same_vm() -> None:
    """Being beside and away from one VM at once is refused up front."""
    with pytest.raises(ContradictoryRules, match="db"):
        Rules(vm_affinity=Affinity(must=names("db")), vm_anti_affinity=Affinity(must=names("db")))


def test_rejects_host_must_affinity_to_a_host_also_in_must_anti_affinity() -> None:
    """A host both required and forbidden is refused up front."""
    with pytest.raises(ContradictoryRules, match="h2"):
        Rules(
            host_affinity=Affinity(must=names("h1", "h2")),
            host_anti_affinity=Affinity(must=names("h2")),
        )


@pytest.mark.parametrize(
    ("near", "away"),
    [
        (Affinity(should=names("x")), Affinity(must=names("x"))),
        (Affinity(must=names("x")), Affinity(should=names("x"))),
        (Affinity(should=names("x")), Affinity(should=names("x"))),
    ],
    ids=["should-near-must-away", "must-near-should-away", "should-both"],
)
def test_rejects_near_and_away_from_one_name_whether_must_or_should(
    near: Affinity, away: Affinity
) -> None:
    """Should-rules contradict like must-rules, for VMs and for hosts alike."""
    with pytest.raises(ContradictoryRules):
        Rules(vm_affinity=near, vm_anti_affinity=away)
    with pytest.raises(ContradictoryRules):
        Rules(host_affinity=near, host_anti_affinity=away)


def test_rejects_a_rule_naming_the_vm_itself() -> None:
    """A VM cannot be placed beside or away from itself."""
    with pytest.raises(ContradictoryRules, match="itself"):
        ask("web", rules=Rules(vm_anti_affinity=Affinity(should=names("web"))))


@pytest.mark.parametrize(
    "size",
    [
        Resources(0.0, 1_000.0),
        Resources(1_000.0, 0.0),
        Resources(-1.0, 1_000.0),
        Resources(1_000.0, 1_000.0, net_mbps=-5.0),
        Resources(1_000.0, 1_000.0, storage_mbs=-5.0),
        Resources(math.inf, 1_000.0),
        Resources(1_000.0, math.nan),
    ],
    ids=[
        "zero-cpu",
        "zero-memory",
        "negative-cpu",
        "negative-net",
        "negative-storage",
        "inf",
        "nan",
    ],
)
def test_rejects_zero_negative_or_non_finite_sizes(size: Resources) -> None:
    """Desired and minimum sizes need positive CPU and memory and nothing negative or infinite."""
    with pytest.raises(AbsurdRequest):
        Request("x", size)
    with pytest.raises(AbsurdRequest):
        Request("x", Resources(2_000.0, 2_000.0), minimum=size)


def test_rejects_a_minimum_above_desired() -> None:
    """A minimum above the desired size in any resource is refused."""
    with pytest.raises(AbsurdRequest, match="memory"):
        Request("x", Resources(2_000.0, 2_000.0), minimum=Resources(1_000.0, 3_000.0))


def test_accepts_zero_network_and_storage() -> None:
    """Network and storage may be left at zero: the VM asks for none."""
    assert not Request("x", Resources(1.0, 1.0)).can_degrade


def test_place_many_rejects_a_vm_asked_for_twice_or_already_placed() -> None:
    """A batch may not place one VM twice, nor one that is already placed."""
    pool = Pool.build(hosts("a"), [vm("old", "a")])
    with pytest.raises(AbsurdRequest, match="twice"):
        place_many(pool, [ask("x"), ask("x")])
    with pytest.raises(AbsurdRequest, match="old"):
        place_many(pool, [ask("old")])


def test_every_refusal_derives_from_the_one_root() -> None:
    """Callers can catch SchedulerError for every refusal of the package."""
    for error in (
        AbsurdRequest,
        ContradictoryRules,
        InvalidPool,
        InsufficientCapacity,
        SpareUncoverable,
        MaintenanceRefused,
        LastUsableHost,
        EvacuationDoesNotFit,
        UnknownName,
    ):
        assert issubclass(error, SchedulerError)
