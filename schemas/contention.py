"""What the contention monitor sees and does: contention on hosts, and the scaling and
slot decisions it takes because of it."""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Event, Name, Part, registry


class Evidence(Part):
    """The telemetry that tipped the decision, over the ticks it considered."""

    ticks: int = Field(ge=1, description="consecutive telemetry ticks over (or under) the bar")
    slowdown: float = Field(ge=0, description="the worst running VM's slowdown, last tick")
    cpu_ready_ms: float = Field(ge=0, description="mean cpu.ready of running VMs, last tick")
    demand_ratio: float = Field(ge=0, description="CPU demand / capacity, last tick")


class _ContentionEvent(Event):
    host: Name
    episode: Name = Field(description="one contention episode: onset to clearing")
    tick: int = Field(ge=0)
    evidence: Evidence

    def aggregate(self) -> str:
        return f"contention/{self.host}"


@registry.register
class ContentionDetected(_ContentionEvent):
    pass


@registry.register
class ContentionCleared(_ContentionEvent):
    pass


class Direction(enum.StrEnum):
    DOWN = "down"
    UP = "up"


@registry.register
class ScalingDecided(Event):
    """The monitor asks a tenant cluster to shrink (contention on ``host``) or to grow back
    (the contention cleared); ``delta`` workers, never beyond the cluster's bounds."""

    host: Name
    episode: Name
    cluster: Name
    direction: Direction
    delta: int
    reason: str

    def aggregate(self) -> str:
        return f"contention/{self.host}"
