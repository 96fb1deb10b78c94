"""Moving a VM between the NUMA nodes of its host: its vCPUs at once, then its memory."""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, registry

# 16 MiB a tick: a 1 GiB VM's remote half moves in 32 ticks.
DEFAULT_PAGES_PER_TICK = 4_096
# 1 GiB a tick: the copy of one tick stays well under the tick itself.
MAX_PAGES_PER_TICK = 262_144

LocalShare = float | None


class NumaOrder(enum.StrEnum):
    """Which of a VM's pages move first."""

    HOT_FIRST = "hot-first"  # the most used first: heat, then read counts
    SEQUENTIAL = "sequential"  # in guest page order


@registry.register
class MoveVmNuma(Command):
    """Run a VM's vCPUs on NUMA node ``node`` of its host from now on, and move its memory
    there over the following ticks, ``pages_per_tick`` pages a tick, in ``order``."""

    host: Name
    vm: Name
    node: int = Field(ge=0)
    order: NumaOrder = NumaOrder.HOT_FIRST
    pages_per_tick: int = Field(DEFAULT_PAGES_PER_TICK, ge=1, le=MAX_PAGES_PER_TICK)

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _NumaEvent(Event):
    host: Name
    vm: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class VmNumaMoveStarted(_NumaEvent):
    """The vCPUs run on ``node`` now; ``pages`` pages of memory are to follow."""

    node: int = Field(ge=0)
    from_node: int = Field(ge=0, description="where its vCPUs ran until now")
    order: NumaOrder
    pages: int = Field(ge=0, description="pages to move: resident, not shared, not there yet")
    pages_per_tick: int = Field(ge=1)
    local_share_before: LocalShare = Field(
        None,
        ge=0,
        le=1,
        description="share of its accesses on its last tick that hit its vCPUs' node; "
        "none if it made none",
    )


@registry.register
class VmNumaMoveProgress(_NumaEvent):
    """One tick of a move: at most one such event per VM a tick, while it moves pages and
    for a few ticks after."""

    tick: int = Field(ge=0)
    pages_moved: int = Field(ge=0, description="since the move started")
    pages_left: int = Field(ge=0)
    local_share: LocalShare = Field(
        None, ge=0, le=1, description="share of this tick's accesses local to the vCPUs' node"
    )


@registry.register
class VmNumaMoveCompleted(_NumaEvent):
    """The move's last report. ``pages_left`` is above 0 only when the node ran out of free
    frames; pages that became shared or swapped out before their turn stayed where they were."""

    node: int = Field(ge=0)
    pages_moved: int = Field(ge=0)
    pages_left: int = Field(ge=0)
    # Pages move 4 KiB at a time: a large page whose pages are moved apart loses its
    # 2 MiB backing; one moved whole, in order, into a free block keeps it.
    large_pages_whole_before: int = Field(
        ge=0, description="the VM's large pages backed by one 2 MiB block as the move started"
    )
    large_pages_whole_after: int = Field(ge=0, description="and as it ended")
    ticks: int = Field(ge=1, description="ticks reported, from the first to this one")
    local_share_before: LocalShare = Field(None, ge=0, le=1)
    local_share_after: LocalShare = Field(None, ge=0, le=1, description="on the last tick")
