"""Rebalancing: when the spread of the hosts' CPU load passes the threshold, the high
scheduler proposes migrations that shrink it; they are queued as migration workloads and
go through the same rounds and reservations as any other. Nothing is proposed while
any migration is queued or under way, so one proposal settles before the next."""

from __future__ import annotations

from schemas import Event
from schemas.pool import Owner
from schemas.scheduling import MigrationReason, MigrationRequested, RebalanceProposed
from services.scheduler.choose import every_rule
from services.scheduler.core import Pool, Resource, load_spread, propose_rebalance
from services.scheduler.holder import Knobs
from services.scheduler.state import SchedulerState
from shared.effects import named


def rebalance_migration(round_number: int, vm: str) -> str:
    return named("reb", round_number, vm)


def propose(state: SchedulerState, knobs: Knobs, round_number: int, pool: Pool) -> list[Event]:
    """``pool``: the ledger's pool as it is now (read, not changed)."""
    if knobs.rebalance_threshold >= 1 or state.moving or not state.ledger.capacity:
        return []
    if any(key.startswith("migration/") for key in state.pending):
        return []
    if load_spread(pool) <= knobs.rebalance_threshold:
        return []
    rules = every_rule(state.rules)
    plan = propose_rebalance(
        pool, knobs.rebalance_threshold, knobs.rebalance_moves, Resource.CPU, rules
    )
    if not plan.moves:
        return []
    requests = [
        MigrationRequested(
            migration=rebalance_migration(round_number, move.vm),
            vm=move.vm,
            priority=Owner.HIGH,
            target=move.target,
            reason=MigrationReason.REBALANCE,
        )
        for move in plan.moves
    ]
    proposed = RebalanceProposed(
        resource=Resource.CPU.name.lower(),
        spread_before=round(plan.spread_before, 4),
        spread_after=round(plan.spread_after, 4),
        threshold=knobs.rebalance_threshold,
        migrations=[r.migration for r in requests],
    )
    return [proposed, *requests]
