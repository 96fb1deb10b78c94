"""Rounds as pure decisions on an injected clock: a round is decided whole on a scratch
fold, and what it decided on is kept once it lands."""

from __future__ import annotations

import pytest

from schemas import Envelope, Message
from schemas.host import HostRegistered
from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import PlacementRequested, RoundCompleted, VmPlaced
from schemas.vm import VmCreated
from services.scheduler.holder import Holder
from services.scheduler.rounds import CHECK_SECONDS, Rounds, decide_round, round_plan
from services.scheduler.state import evolve
from shared.outcome import Outcome


class Log:
    """What the runtime does with a round's outcomes, without a bus: each event gets the
    next sequence and is folded; then the outcomes' landing hooks run."""

    def __init__(self, holder: Holder) -> None:
        self.holder = holder
        self.seq = 0

    def append(self, *events: Message) -> None:
        for event in events:
            self.seq += 1
            env = Envelope.wrap(event, producer="test")
            self.holder.state = evolve(self.holder.state, self.seq, env)

    def land(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.append(*outcome.events)
        for outcome in outcomes:
            for done in outcome.on_landed:
                done()


def hosts(holder: Holder, log: Log, count: int) -> None:
    log.append(
        *(
            HostRegistered(host=f"h{i}", cpu_cores=16, cpu_mhz=2400, mem_mib=65536)
            for i in range(count)
        )
    )


def ask(log: Log, vm: str) -> None:
    log.append(PlacementRequested(vm=vm, priority=Owner.HIGH, cpu=1, mem_mib=256))


def test_a_round_places_its_queue_in_one_go_on_a_scratch_fold() -> None:
    """Each placement of the round sees what the ones before it reserved; the real fold
    changes only when the outcomes land."""
    holder = Holder(Owner.HIGH)
    log = Log(holder)
    hosts(holder, log, 2)
    for i in range(5):
        ask(log, f"vm{i}")
    before = holder.state
    outcomes = decide_round(holder, 1, without_high=False)
    assert holder.state is before
    placed = [e for o in outcomes for e in o.events if isinstance(e, VmPlaced)]
    assert [p.vm for p in placed] == [f"vm{i}" for i in range(5)]
    [done] = [e for o in outcomes for e in o.events if isinstance(e, RoundCompleted)]
    assert (done.placed, done.unplaced) == (5, 0)
    log.land(outcomes)
    assert set(holder.state.placed) == {f"vm{i}" for i in range(5)}


def test_the_pool_is_built_once_while_only_this_scheduler_changes_the_ledger() -> None:
    """Building the pool costs time in the number of VMs: rounds that land as decided
    keep the pool they decided on instead of building it again."""
    holder = Holder(Owner.HIGH)
    log = Log(holder)
    hosts(holder, log, 4)
    for number in range(1, 11):
        for i in range(3):
            ask(log, f"vm{number}-{i}")
        log.land(decide_round(holder, number, without_high=False))
    assert len(holder.state.placed) == 30
    assert holder.pools.builds == 1


def test_a_round_is_due_by_the_injected_clock_and_runs_once() -> None:
    """Round n is due once the clock passes n periods, and is planned once."""
    holder = Holder(Owner.HIGH)
    now = [0.95]
    rounds = Rounds(period=0.5, high_wait=0.25, clock=lambda: now[0])
    assert len(round_plan(holder, rounds)) == 1
    assert rounds.done == 1
    assert round_plan(holder, rounds) == []
    now[0] = 1.0
    assert len(round_plan(holder, rounds)) == 1
    assert rounds.done == 2


def test_the_low_scheduler_waits_for_the_high_round_then_goes_without_it() -> None:
    """With high work queued, the low round waits up to ``high_wait`` past its start."""
    holder = Holder(Owner.LOW)
    log = Log(holder)
    hosts(holder, log, 1)
    log.append(PlacementRequested(vm="hi", priority=Owner.HIGH, cpu=1, mem_mib=256))
    now = [2.1]
    rounds = Rounds(period=1.0, high_wait=0.5, clock=lambda: now[0])
    assert round_plan(holder, rounds) == []
    now[0] = 2.6
    assert len(round_plan(holder, rounds)) == 1
    assert rounds.done == 2


def test_a_placement_waits_while_no_host_is_known() -> None:
    """Before any host has registered (or reached this scheduler), a request is kept,
    not refused; it is placed once a host is known."""
    holder = Holder(Owner.HIGH)
    log = Log(holder)
    ask(log, "early")
    assert decide_round(holder, 1, without_high=False) == []
    hosts(holder, log, 1)
    log.land(decide_round(holder, 2, without_high=False))
    assert "early" in holder.state.placed


def test_a_round_shrinks_the_reservations_of_vms_run_smaller_and_only_those() -> None:
    """Rounds look only at the VMs whose reservation exceeds their size (kept by the
    fold), not at every VM placed: a VM created smaller than reserved is shrunk, once."""
    holder = Holder(Owner.HIGH)
    log = Log(holder)
    hosts(holder, log, 2)
    for vm in ("a", "b", "c"):
        ask(log, vm)
    log.land(decide_round(holder, 1, without_high=False))
    for vm, mem in (("a", 256), ("b", 128), ("c", 256)):
        host = holder.state.placed[vm].host
        log.append(
            VmCreated(vm=vm, host=host, cpu=1, mem_mib=mem, priority="high", powered_on=True)
        )
    assert set(holder.state.oversized) == {"b"}
    outcomes = decide_round(holder, 2, without_high=False)
    shrunk = [e for o in outcomes for e in o.events if isinstance(e, CapacityReserved)]
    assert [(e.reservation, e.mem_mib) for e in shrunk] == [("b", 128.0)]
    log.land(outcomes)
    assert set(holder.state.oversized) == set()
    again = decide_round(holder, 3, without_high=False)
    assert not [e for o in again for e in o.events if isinstance(e, CapacityReserved)]


def test_a_round_that_ran_past_its_period_is_followed_at_once() -> None:
    """The next look comes when the next round is due: at once after a round that took
    longer than its period, and at most a check away while one waits."""
    holder = Holder(Owner.HIGH)
    log = Log(holder)
    hosts(holder, log, 1)
    now = [10.0]
    rounds = Rounds(period=0.5, high_wait=0.25, clock=lambda: now[0])
    ask(log, "vm0")
    assert round_plan(holder, rounds)
    now[0] = 10.2
    assert rounds.pause() == CHECK_SECONDS
    now[0] = 10.496
    assert rounds.pause() == pytest.approx(0.004)
    now[0] = 10.7
    assert rounds.pause() == 0.0
    assert round_plan(holder, rounds)
    assert round_plan(holder, rounds) == []
    now[0] = 11.2
    # Due by the clock, but the last look ran nothing: not again at once.
    assert rounds.pause() == CHECK_SECONDS
