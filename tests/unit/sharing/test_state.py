"""The daemon's fold: pages held from sharing after a private copy, until their hold ends."""

from __future__ import annotations

from functools import reduce

from schemas import Envelope, Event
from schemas.memory import PagesUnshared
from schemas.sharing import ReadPolicy, SharingPassCompleted, SharingPolicySet, UnshareReason
from services.sharing.state import Sharing, evolve


def at(event: Event, sim_time: float) -> Envelope[Event]:
    return Envelope.wrap(event, producer="test", sim_time=sim_time)


def passed(sim_time: float) -> Envelope[Event]:
    figures = SharingPassCompleted(
        host="h1",
        full_scans=1,
        pages_scanned=10,
        volatile=0,
        unique=10,
        proposed=0,
        bookkeeping_bytes=100,
        digest="00",
    )
    return at(figures, sim_time)


def test_a_private_copy_is_held_for_the_policys_time_and_then_let_go() -> None:
    """Copies for a read pattern are held from sharing; a requested unshare is not; the
    holds go once a pass sees their time has passed."""
    log = [
        at(SharingPolicySet(policy=ReadPolicy(hold_s=100)), 0),
        at(
            PagesUnshared(
                host="h1", vm="a", pages=[1, 2], reason=UnshareReason.READ_PATTERN, copied=2
            ),
            10,
        ),
        at(PagesUnshared(host="h1", vm="b", pages=[3], copied=1), 10),
        passed(50),
    ]
    state = reduce(evolve, log, Sharing())
    assert state.held == {("a", 1): 110.0, ("a", 2): 110.0}
    assert state.record("h1").private_copies == 2
    assert evolve(state, passed(111)).held == {}
