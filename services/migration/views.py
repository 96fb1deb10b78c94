"""What ``vplane migrations`` shows: each migration the coordinator knows, from its fold."""

from __future__ import annotations

from schemas.migration import MigrationView
from schemas.transfers import MigrationCompleted
from services.migration.state import Coordinator, Flight


def migration_views(state: Coordinator) -> list[MigrationView]:
    return [_view(f) for f in state.flights.values()]


def _view(f: Flight) -> MigrationView:
    started, ended = f.started, f.ended
    view = MigrationView(
        migration=f.id,
        vm=started.vm,
        source=started.source,
        target=started.target,
        mode=started.mode,
        state="switching-over" if f.final else "copying",
        rounds=len(f.done),
        bytes=f.bytes,
        throttle=f.progress.throttle,
    )
    if isinstance(ended, MigrationCompleted):
        return view.model_copy(
            update={
                "state": "completed",
                "rounds": ended.rounds,
                "bytes": ended.bytes,
                "downtime_ms": ended.downtime_ms,
                "total_s": ended.total_s,
                "checksums_equal": ended.checksums_equal,
            }
        )
    if ended is not None:
        return view.model_copy(
            update={"state": "aborted", "reason": ended.reason, "rounds": ended.rounds}
        )
    return view
