"""The schedulers' choice: the ledger handed to the placement core, its decision explained."""

from __future__ import annotations

from schemas.host import HostRegistered
from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import PlacementRequested
from services.scheduler.choose import PoolCache, choose
from services.scheduler.ledger import Ledger, evolve


def two_hosts() -> Ledger:
    ledger = Ledger()
    for seq, host in enumerate(("h1", "h2"), start=1):
        ledger = evolve(
            ledger, seq, HostRegistered(host=host, cpu_cores=8, cpu_mhz=1000, mem_mib=8192)
        )
    return ledger


def ask(vm: str, cpu: int, mem: int, min_mem_mib: int | None = None) -> PlacementRequested:
    return PlacementRequested(
        vm=vm, priority=Owner.LOW, cpu=cpu, mem_mib=mem, min_mem_mib=min_mem_mib
    )


def test_balanced_choice_avoids_the_busier_host_and_explains_itself() -> None:
    """With h1 half reserved, a VM goes to h2; the runner-up and filter counts are given."""
    ledger = evolve(
        two_hosts(),
        3,
        CapacityReserved(
            host="h1",
            reservation="big",
            workload="big",
            owner=Owner.HIGH,
            cpu_mhz=4000,
            mem_mib=4096,
        ),
    )
    choice = choose(ledger, ask("web", 2, 1024), Owner.LOW)
    assert choice is not None
    assert choice.reservation.host == "h2"
    assert [c.host for c in choice.runners_up] == ["h1"]
    assert choice.filtered["capacity"] == 0
    assert not choice.degraded


def test_degraded_when_only_the_minimum_fits() -> None:
    """Without room for the desired size, the VM gets less, never below its minimum."""
    choice = choose(two_hosts(), ask("db", 4, 16_000, min_mem_mib=4096), Owner.LOW)
    assert choice is not None
    assert choice.degraded
    assert 4096 <= choice.mem_mib <= 8192


def test_nothing_when_even_the_minimum_fits_nowhere() -> None:
    """A request larger than any host is no choice at all."""
    assert choose(two_hosts(), ask("huge", 2, 100_000), Owner.LOW) is None
    assert choose(Ledger(), ask("any", 1, 64), Owner.LOW) is None


def test_the_pool_is_built_once_while_only_our_reservations_change_the_ledger() -> None:
    """Deciding reuses the pool it reserved into; another writer's event rebuilds it."""
    pools = PoolCache()
    ledger, seq = two_hosts(), 10
    hosts = []
    for i in range(6):
        choice = choose(ledger, ask(f"vm{i}", 1, 1024), Owner.LOW, pools=pools)
        assert choice is not None
        seq += 1
        ledger = evolve(ledger, seq, choice.reservation)
        pools.reserved(ledger, choice)
        hosts.append(choice.reservation.host)
    assert pools.builds == 1
    # The cached pool saw every reservation: balanced placement alternates the hosts.
    assert sorted(hosts) == ["h1"] * 3 + ["h2"] * 3
    other = CapacityReserved(
        host="h1", reservation="theirs", workload="theirs", owner=Owner.HIGH, cpu_mhz=1, mem_mib=1
    )
    ledger = evolve(ledger, seq + 1, other)
    assert choose(ledger, ask("next", 1, 64), Owner.LOW, pools=pools) is not None
    assert pools.builds == 2
