"""The pool ledger's fold: capacity from hosts, reservations and releases, versions."""

from __future__ import annotations

from schemas.host import HostRegistered
from schemas.pool import CapacityReleased, CapacityReserved, Owner
from services.scheduler.ledger import Amounts, Ledger, evolve


def test_reservations_take_capacity_and_releases_give_it_back() -> None:
    """Free capacity is the host's capacity less what is reserved; versions follow the log."""
    ledger = evolve(
        Ledger(),
        1,
        HostRegistered(
            host="h1", cpu_cores=4, cpu_mhz=1000, mem_mib=4096, net_mbps=100, storage_mbs=50
        ),
    )
    assert ledger.free("h1") == Amounts(4000, 4096, 200, 50)
    assert ledger.versions.get("h1", 0) == 0
    r = CapacityReserved(
        host="h1",
        reservation="r1",
        workload="vm1",
        owner=Owner.LOW,
        cpu_mhz=1000,
        mem_mib=1024,
        net_mbps=10,
    )
    ledger = evolve(ledger, 7, r)
    assert ledger.free("h1") == Amounts(3000, 3072, 190, 50)
    assert ledger.versions["h1"] == 7
    assert ledger.holds("r1")
    ledger = evolve(ledger, 9, CapacityReleased(host="h1", reservation="r1"))
    assert ledger.free("h1") == Amounts(4000, 4096, 200, 50)
    assert ledger.versions["h1"] == 9
    assert not ledger.holds("r1")


def test_amounts_fit_only_when_every_resource_fits() -> None:
    """A demand fits when each of its resources does."""
    room = Amounts(1000, 1000, 10, 10)
    assert Amounts(1000, 1000, 10, 10).fits_in(room)
    assert not Amounts(1, 1001, 0, 0).fits_in(room)
