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
from services.scheduler.evacuating import sweep
from services.scheduler.holder import Holder
from services.scheduler.moving import Progress, schedule_copy, schedule_migration, settle
from services.scheduler.placing import place, release_destroyed
from services.scheduler.raising import raise_degraded
from services.scheduler.rebalancing import propose
from services.scheduler.state import Work, work_key
from shared.outcome import Decision, Outcome, Plan

log = structlog.get_logger("vplane.scheduler")


@dataclass
class Rounds:
    period: float
    high_wait: float
    clock: Callable[[], float]
    # The last round this scheduler ran (in this process).
    done: int = 0
    warned: int = 0


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
    tally = Tally()

    def housekeeping() -> list[Outcome]:
        done = settle(holder) + release_destroyed(holder)
        tally.other += len(done)
        return done

    steps: list[Outcome | Decision] = [housekeeping]
    steps += [_work(holder, work, number, tally) for work in holder.state.queue()]
    steps += [_raise(holder, vm, tally) for vm in sorted(holder.state.degraded)]
    if holder.state.priority is Owner.HIGH:
        steps.append(lambda: _follow_up(holder, number, tally))
    steps.append(lambda: _completed(holder, number, without_high, tally))
    return steps


def _work(holder: Holder, work: Envelope[Work], number: int, tally: Tally) -> Decision:
    def decide() -> Outcome | None:
        outcome: Outcome | None
        match work.data:
            case PlacementRequested():
                outcome = place(holder, work, number)  # type: ignore[arg-type]
                placed = outcome.events and not outcome.events[0].type_name().endswith("Rejected")
                progress = Progress.SCHEDULED if placed else Progress.REFUSED
            case MigrationRequested():
                outcome, progress = schedule_migration(holder, work, number)  # type: ignore[arg-type]
            case CopyRequested():
                outcome, progress = schedule_copy(holder, work, number)  # type: ignore[arg-type]
        tally.progress[work_key(work.data)] = progress
        return outcome

    return decide


def _raise(holder: Holder, vm: str, tally: Tally) -> Decision:
    def decide() -> Outcome | None:
        if vm not in holder.state.degraded:
            return None
        outcome = raise_degraded(holder, vm)
        if outcome is not None:
            tally.other += 1
        return outcome

    return decide


def _follow_up(holder: Holder, number: int, tally: Tally) -> list[Outcome]:
    """Sweeps of hosts in maintenance and rebalancing proposals. A migration is asked
    for once, whichever round asks."""
    follow_up = sweep(holder.state)
    if holder.state.ledger.revision != holder.balanced_at:
        holder.balanced_at = holder.state.ledger.revision
        pool = holder.pools.get(holder.state.ledger, Owner.HIGH, holder.knobs.ha_failures)
        follow_up += propose(holder.state, holder.knobs, number, pool)
    tally.other += len(follow_up)
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
