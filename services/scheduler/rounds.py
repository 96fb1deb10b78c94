"""Scheduling rounds: the high scheduler places first; the low one after it, or after a
bounded wait if the high one is down, saying so.

A round settles the transfers that ended, places the queue in arrival order (VMs,
migrations, copies), raises degraded VMs where room freed, and, in the high scheduler,
sweeps hosts in maintenance and proposes rebalancing migrations for the next round.
Round ``n`` is due once the clock passes ``n`` periods; the clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from schemas import Envelope, Event
from schemas.pool import Owner
from schemas.scheduling import (
    CopyRequested,
    MigrationRequested,
    PlacementRequested,
    RoundCompleted,
)
from schemas.service import CommandRejected
from services.scheduler.evacuating import sweep
from services.scheduler.holder import Holder
from services.scheduler.moving import Progress, schedule_copy, schedule_migration, settle
from services.scheduler.placing import place, release_destroyed
from services.scheduler.raising import raise_degraded
from services.scheduler.rebalancing import propose
from services.scheduler.resizing import follow_sizes
from services.scheduler.restarting import failover, restart, to_restart
from services.scheduler.scratch import Scratch
from services.scheduler.state import Work, work_key
from shared.outcome import Outcome, Plan

log = structlog.get_logger("vplane.scheduler")


# How often a scheduler looks whether its next round is due, when it is not yet.
CHECK_SECONDS = 0.01


@dataclass
class Rounds:
    period: float
    high_wait: float
    clock: Callable[[], float]
    # The last round this scheduler ran (in this process).
    done: int = 0
    warned: int = 0
    # Whether the last look ran a round.
    ran: bool = False

    def pause(self) -> float:
        """How long until the next look: none when a round just ran past its period (the
        next one is due), else until the next is due, looking at least every
        CHECK_SECONDS (the low scheduler may be waiting for the high one's round)."""
        until = (self.done + 1) * self.period - self.clock()
        if until <= 0 and not self.ran:
            return CHECK_SECONDS
        return min(CHECK_SECONDS, max(until, 0.0))


def due(holder: Holder, rounds: Rounds) -> tuple[int, bool] | None:
    """The round to run now and whether it goes without the high scheduler's, or None."""
    now = rounds.clock()
    number = int(now // rounds.period)
    if number <= rounds.done:
        return None
    state = holder.state
    waits = state.priority is Owner.LOW and state.has_work(Owner.HIGH)
    if waits and state.rounds.get(Owner.HIGH, -1) < number:
        if now < number * rounds.period + rounds.high_wait:
            return None
        if rounds.warned < number:
            rounds.warned = number
            log.warning("high scheduler did not finish its round; going ahead", round=number)
        return number, True
    return number, False


def round_plan(holder: Holder, rounds: Rounds) -> Plan:
    """The decisions of the round that is due, in order; nothing when none is."""
    when = due(holder, rounds)
    rounds.ran = when is not None
    if when is None:
        return []
    number, without_high = when
    rounds.done = number
    return plan(holder, number, without_high)


@dataclass
class Tally:
    progress: dict[str, Progress] = field(default_factory=dict)
    other: int = 0


def plan(holder: Holder, number: int, without_high: bool) -> Plan:
    """The whole round as one decision: its outcomes land in one atomic append."""
    return [lambda: decide_round(holder, number, without_high)]


def decide_round(holder: Holder, number: int, without_high: bool) -> list[Outcome]:
    """Every decision of the round, each taken on the state the ones before it leave.

    They are decided on a scratch copy of the fold (and of the pool cache) that each
    outcome's events are folded into as if they had landed; the real fold takes it when
    they do (``scratch.py``). Should the append meet another writer's change, the runtime
    catches up and the round is decided again from the start."""
    real = holder.state
    with Scratch(holder) as scratch:
        tally = Tally()
        for housekeeping in settle(holder) + release_destroyed(holder) + follow_sizes(holder):
            scratch.take(housekeeping)
            tally.other += 1
        # A failed host's VMs come back before new work is placed.
        for vm in to_restart(holder):
            if scratch.take(restart(holder, vm)):
                tally.other += 1
        for vm in sorted(real.failovers):
            if vm in holder.state.failovers and scratch.take(failover(holder, vm)):
                tally.other += 1
        # With no host known yet (the stack is starting, or this scheduler's view of the
        # log is behind), the queue waits for one rather than being refused for room.
        for work in real.queue() if real.ledger.capacity else ():
            outcome, progress = _work(holder, work, number)
            tally.progress[work_key(work.data)] = progress
            scratch.take(outcome)
        for vm in sorted(real.degraded):
            if vm in holder.state.degraded and scratch.take(raise_degraded(holder, vm)):
                tally.other += 1
        if real.priority is Owner.HIGH:
            for asked in _follow_up(holder, number):
                scratch.take(asked)
                tally.other += 1
        scratch.take(_completed(holder, number, without_high, tally))
    return scratch.landed()


def _work(holder: Holder, work: Envelope[Work], number: int) -> tuple[Outcome | None, Progress]:
    match work.data:
        case PlacementRequested():
            outcome = place(holder, work, number)  # type: ignore[arg-type]
            refused = isinstance(outcome.events[0], CommandRejected)
            return outcome, Progress.REFUSED if refused else Progress.SCHEDULED
        case MigrationRequested():
            return schedule_migration(holder, work, number)  # type: ignore[arg-type]
        case CopyRequested():
            return schedule_copy(holder, work, number)  # type: ignore[arg-type]
    raise AssertionError(f"no such work: {work.type}")


def _follow_up(holder: Holder, number: int) -> list[Outcome]:
    """Sweeps of hosts in maintenance and rebalancing proposals. A migration is asked
    for once, whichever round asks."""
    follow_up = sweep(holder.state)
    if holder.state.ledger.revision != holder.balanced_at:
        holder.balanced_at = holder.state.ledger.revision
        pool = holder.pools.get(holder.state.ledger, Owner.HIGH, holder.knobs.ha_failures)
        follow_up += propose(holder.state, holder.knobs, number, pool)
    return [Outcome(events=[e], key=_follow_up_key(number, e, i)) for i, e in enumerate(follow_up)]


def _follow_up_key(number: int, event: Event, index: int) -> str:
    if isinstance(event, MigrationRequested):
        return f"requested:{event.migration}"
    return f"round:{number}:{event.aggregate()}:{index}"


def _completed(holder: Holder, number: int, without_high: bool, tally: Tally) -> Outcome | None:
    """A round is announced only when it had work, so an idle pool logs nothing."""
    placed = sum(1 for p in tally.progress.values() if p is Progress.SCHEDULED)
    unplaced = len(tally.progress) - placed
    if not (placed or unplaced or tally.other):
        return None
    done = RoundCompleted(
        priority=holder.state.priority,
        round=number,
        placed=placed,
        unplaced=unplaced,
        without_high=without_high,
    )
    return Outcome(events=[done], key=f"round:{number}")
