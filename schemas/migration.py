"""The migration coordinator's record of each live migration: its rounds, its throttle
steps and its switchover (the start is the source host's, the end is in
schemas/transfers.py), and the query that lists migrations."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Event, Name, Part, Query, Reply, registry
from schemas.transfers import MigrationMode


class _CoordinatorEvent(Event):
    migration: Name
    vm: Name

    def aggregate(self) -> str:
        return f"migration/{self.migration}"


class RoundFigures(Part):
    """What one round put on the wire."""

    round: int = Field(ge=0)
    live: bool = Field(description="the guest ran meanwhile (False: the stop-and-copy)")
    pages: int = Field(ge=0)
    zero_pages: int = Field(ge=0, description="sent as markers, no bytes")
    mapped_pages: int = Field(0, ge=0, description="sent as (disk, block), no bytes")
    bytes: int = Field(ge=0)
    duration_s: float = Field(ge=0, description="emulated: bytes over the reserved bandwidth")


@registry.register
class MigrationRoundSent(_CoordinatorEvent):
    """A round's pages are on the data flow: the target imports them while (in a live
    round) the guest runs on for the round's emulated duration."""

    figures: RoundFigures
    ends_at: float = Field(ge=0, description="the stack's emulated time the round ends at")


@registry.register
class MigrationRoundDone(_CoordinatorEvent):
    """A round arrived; ``dirty_pages_left`` is what the guest wrote while it was sent."""

    figures: RoundFigures
    dirty_pages_left: int = Field(ge=0)
    throttle: float = Field(ge=0, le=1, description="share of CPU time held back meanwhile")
    target_checksum: str | None = None
    # After a switchover: pages still on the source, and the remote faults the target's
    # guest took while this round crossed.
    pages_left: int | None = Field(None, ge=0)
    remote_faults: int = Field(0, ge=0)


@registry.register
class MigrationThrottleRaised(_CoordinatorEvent):
    """Rounds stopped shrinking: the guest keeps ``1 - throttle`` of its CPU time."""

    throttle: float = Field(gt=0, le=1)
    after_round: int = Field(ge=0)


@registry.register
class MigrationSwitchingOver(_CoordinatorEvent):
    """What is left fits the downtime limit: the source is stunned for the last round."""

    after_round: int = Field(ge=0)
    dirty_pages: int = Field(ge=0)
    expected_downtime_ms: float = Field(ge=0)


class MigrationView(Part):
    migration: Name
    vm: Name
    source: Name
    target: Name
    mode: MigrationMode
    state: str = Field(description="copying, switching-over, completed or aborted")
    rounds: int = Field(ge=0)
    bytes: int = Field(ge=0)
    throttle: float = Field(ge=0, le=1)
    downtime_ms: float | None = None
    total_s: float | None = None
    checksums_equal: bool | None = None
    reason: str | None = None


@registry.register
class ListMigrations(Query):
    def aggregate(self) -> str:
        return "migrations"


@registry.register
class MigrationList(Reply):
    migrations: list[MigrationView]
