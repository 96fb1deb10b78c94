"""Outcomes carried out together land in one append, guarded by what they expect."""

from __future__ import annotations

from schemas import Envelope
from schemas.vm import VmCreated
from shared.bus.memory import MemoryBus
from shared.effects import batches, named
from shared.outcome import Outcome


def created(vm: str, host: str) -> VmCreated:
    return VmCreated(vm=vm, host=host, cpu=1, mem_mib=64, priority="low", powered_on=False)


async def test_an_expectation_guards_the_batchs_first_event_of_its_aggregate() -> None:
    """An outcome that expects an aggregate's version after another outcome of the same
    batch wrote that aggregate unguarded (a round's housekeeping, then a reservation on
    the same host): the expectation guards the first write, so the batch lands."""
    bus = MemoryBus()
    await bus.append(Envelope.wrap(created("x", "h0"), producer="s"))
    version = await bus.version("vm/x")
    housekeeping = Outcome(events=[created("y", "h1"), created("x", "h1")], key="housekeeping")
    reservation = Outcome(events=[created("x", "h2")], key="reserve", expect={"vm/x": version})
    [batch] = batches("s", [housekeeping, reservation], 0.0, lambda _: False)
    assert batch.expected == {1: version}
    await bus.append_batch(batch.events, expected=batch.expected)
    assert await bus.version("vm/x") == version + 3


def test_a_name_a_decision_gives_is_fixed_by_what_it_is_about() -> None:
    """Migration names in logs already written keep their meaning: the same parts give
    the same name as before the scheme moved out of the scheduler, other parts another."""
    assert named("mnt", "h1", "v1", "vm3") == "mnt-7c591d1ef08059be"
    assert named("reb", 17, "vm3") == "reb-500be8f4e55d5e05"
    assert named("reb", 18, "vm3") != named("reb", 17, "vm3")
