"""The one mutable cell of a scheduler: its fold, and the knobs it runs with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.pool import Owner
from services.scheduler.choose import PoolCache
from services.scheduler.state import SchedulerState
from shared.clock import StackClock


@dataclass(frozen=True, slots=True)
class Knobs:
    ha_failures: int = 1
    migration_mbps: float = 2_500.0
    rebalance_threshold: float = 0.5
    rebalance_moves: int = 4
    # A host silent this long (its telemetry ticks missed x tick length) is declared failed.
    failure_ticks: int = 5
    tick_seconds: float = 1.0
    # Fold the log's entries too wherever a decision's scratch fold is taken, and fail
    # if they differ (slow: for tests).
    check_folds: bool = False


class Holder:
    def __init__(self, priority: Owner, knobs: Knobs | None = None) -> None:
        self.service = f"scheduler-{priority.value}"
        self.state = SchedulerState(priority)
        # The stack's emulated time as this scheduler knows it (the runtime's).
        self.clock = StackClock()
        self.knobs = knobs or Knobs()
        self.pools = PoolCache()
        # The ledger revision rebalancing last looked at (it need not look again before
        # the pool changes).
        self.balanced_at = -1
        # Each host's latest heartbeat: when its telemetry was sent, and its tick. Not in
        # the log (telemetry is not): carried over a restart in ServiceStopped; after a
        # process killed outright, every host gets a full silence from the new start.
        self.heartbeats: dict[str, tuple[float, int]] = {}
        self.watching_since: float | None = None

    def save(self) -> dict[str, Any]:
        return {"heartbeats": {h: [sent, tick] for h, (sent, tick) in self.heartbeats.items()}}

    def load(self, saved: dict[str, Any]) -> None:
        self.heartbeats = {
            h: (float(sent), int(tick)) for h, (sent, tick) in saved.get("heartbeats", {}).items()
        }
