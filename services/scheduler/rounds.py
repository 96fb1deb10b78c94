"""Scheduling rounds: the high scheduler places first; the low one after it, or after a
bounded wait if the high one is down, saying so.

A round settles the transfers that ended, places the queue in arrival order (VMs,
migrations, copies), raises degraded VMs where room freed, and, in the high scheduler,
sweeps hosts in maintenance and proposes rebalancing migrations for the next round.
"""

from __future__ import annotations

import asyncio
import time
import uuid

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
from services.scheduler.moving import Outcome, schedule_copy, schedule_migration, settle
from services.scheduler.placing import place, release_destroyed
from services.scheduler.raising import raise_degraded
from services.scheduler.rebalancing import propose
from services.scheduler.state import Work
from shared.runtime import Runtime

log = structlog.get_logger("vplane.scheduler")


def round_id(service: str, number: int) -> uuid.UUID:
    """One RoundCompleted per round, even if the scheduler restarts in the middle of it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:{service}:round:{number}")


def event_id(service: str, number: int, event: Event, index: int) -> uuid.UUID:
    """A migration is asked for once, whichever round asks."""
    key = (
        f"requested:{event.migration}"
        if isinstance(event, MigrationRequested)
        else f"{number}:{event.aggregate()}:{index}"
    )
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:{service}:{key}")


async def run_rounds(runtime: Runtime, holder: Holder, period: float, high_wait: float) -> None:
    while True:
        number = int(time.time() // period) + 1
        await asyncio.sleep(max(0.0, number * period - time.time()))
        without_high = False
        if holder.state.priority is Owner.LOW and holder.state.has_work(Owner.HIGH):
            without_high = not await _high_done(holder, number, high_wait)
        async with runtime.exclusive():
            await run_round(runtime, holder, number, without_high)


async def run_round(runtime: Runtime, holder: Holder, number: int, without_high: bool) -> None:
    """One round; it is announced only when it had work, so an idle pool logs nothing."""
    work = await settle(runtime, holder)
    work += await release_destroyed(runtime, holder)
    placed, unplaced = await place_pending(runtime, holder, number)
    work += placed + unplaced + await raise_degraded(runtime, holder)
    if holder.state.priority is Owner.HIGH:
        follow_up = sweep(holder.state)
        if holder.state.ledger.revision != holder.balanced_at:
            holder.balanced_at = holder.state.ledger.revision
            pool = holder.pools.get(holder.state.ledger, Owner.HIGH, holder.knobs.ha_failures)
            follow_up += propose(holder.state, holder.knobs, number, pool)
        if follow_up:
            ids = [event_id(runtime.name, number, e, i) for i, e in enumerate(follow_up)]
            await runtime.publish(follow_up, caused_by=None, ids=ids)
        work += len(follow_up)
    if not work:
        return
    done = RoundCompleted(
        priority=holder.state.priority,
        round=number,
        placed=placed,
        unplaced=unplaced,
        without_high=without_high,
    )
    await runtime.publish([done], caused_by=None, ids=[round_id(runtime.name, number)])


async def _high_done(holder: Holder, number: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while holder.state.rounds.get(Owner.HIGH, -1) < number:
        if time.monotonic() > deadline:
            log.warning("high scheduler did not finish its round; going ahead", round=number)
            return False
        await asyncio.sleep(0.02)
    return True


async def place_pending(runtime: Runtime, holder: Holder, number: int) -> tuple[int, int]:
    """Work of the queue placed and not (refused, or waiting for room)."""
    placed = unplaced = 0
    for work in holder.state.queue():
        if await _one(runtime, holder, work, number):
            placed += 1
        else:
            unplaced += 1
    return placed, unplaced


async def _one(runtime: Runtime, holder: Holder, work: Envelope[Work], number: int) -> bool:
    match work.data:
        case PlacementRequested():
            return await place(runtime, holder, work, number)  # type: ignore[arg-type]
        case MigrationRequested():
            outcome = await schedule_migration(runtime, holder, work, number)  # type: ignore[arg-type]
        case CopyRequested():
            outcome = await schedule_copy(runtime, holder, work, number)  # type: ignore[arg-type]
    return outcome is Outcome.SCHEDULED
