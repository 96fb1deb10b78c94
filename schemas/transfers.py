"""Live migrations and network file copies.

A scheduler reserves the capacity and bandwidth first, then asks the source host to
start. For a copy the host answers at once that it started and, when the emulated
transfer time has passed, that it completed (or that it aborted, when an end failed
meanwhile). A migration's start is the source host's; the migration coordinator then
moves the memory in rounds and says how it ended (schemas/migration.py).
"""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, registry
from schemas.vm import MemoryMode

# The downtime a live migration aims at when none is asked for (QEMU's default too).
DEFAULT_DOWNTIME_MS = 300
MAX_DOWNTIME_MS = 60_000


class MigrationMode(enum.StrEnum):
    """``precopy``: rounds of pages while the guest runs, then a short stop; ``postcopy``:
    switch over at once and pull pages on demand; ``hybrid``: the hot pages first."""

    PRECOPY = "precopy"
    POSTCOPY = "postcopy"
    HYBRID = "hybrid"


class _SourceCommand(Command):
    host: Name = Field(description="the source host, which carries the transfer out")
    target: Name
    rate_mbps: float = Field(gt=0, le=1_000_000, description="bandwidth reserved for it")

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class StartMigration(_SourceCommand):
    """Move a VM from ``host`` to ``target``: its memory crosses the network at ``rate_mbps``."""

    migration: Name
    vm: Name
    mode: MigrationMode = MigrationMode.PRECOPY
    downtime_ms: int = Field(DEFAULT_DOWNTIME_MS, ge=1, le=MAX_DOWNTIME_MS)


class _MigrationEvent(Event):
    migration: Name
    vm: Name
    source: Name
    target: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class MigrationStarted(_MigrationEvent):
    """The source host let the migration begin: both ends are up, the VM is not moving
    already and the target has room. The target holds an empty shell for it from now."""

    expected_seconds: float = Field(ge=0, description="emulated seconds to send its memory once")
    mode: MigrationMode = MigrationMode.PRECOPY
    downtime_ms: int = Field(DEFAULT_DOWNTIME_MS, ge=1, le=MAX_DOWNTIME_MS)
    rate_mbps: float = Field(0.0, ge=0, description="the bandwidth reserved for it")
    mem_mib: int = Field(0, ge=0)
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    running: bool = Field(True, description="False: off or suspended, moved cold in one round")


@registry.register
class MigrationSwitchedOver(_MigrationEvent):
    """Post-copy and hybrid: the VM runs on the target from now on, while the pages it has
    not got yet are still on the source (which is stunned and must stay up until they
    have all crossed: a source that fails now takes the VM with it)."""

    mode: MigrationMode
    checksum_at_stun: str | None = None
    pages_left: int = Field(0, ge=0, description="pages still on the source")


@registry.register
class MigrationCompleted(_MigrationEvent):
    """The VM runs on the target now; the figures say how it got there."""

    mode: MigrationMode = MigrationMode.PRECOPY
    rounds: int = Field(0, ge=0, description="pre-copy rounds, the stop-and-copy included")
    pages: int = Field(0, ge=0, description="pages sent, counting a page once per round")
    zero_pages: int = Field(0, ge=0, description="of those, sent as zero markers")
    mapped_pages: int = Field(0, ge=0, description="of those, sent as (disk, block)")
    bytes: int = Field(0, ge=0, description="bytes on the wire, device state included")
    downtime_ms: float = Field(0.0, ge=0, description="emulated time the guest ran nowhere")
    total_s: float = Field(0.0, ge=0, description="emulated time from start to switchover")
    max_throttle: float = Field(0.0, ge=0, le=1, description="share of CPU time held back")
    remote_faults: int = Field(0, ge=0, description="pages the target pulled on demand")
    full_speed_s: float | None = Field(
        None, ge=0, description="emulated time from switchover to the last remote fault"
    )
    checksum_at_stun: str | None = Field(None, description="source memory when stunned")
    checksum_on_target: str | None = Field(None, description="target memory once arrived")
    checksum_replayed: str | None = Field(
        None, description="post-copy: the source's memory at the stun with the target's runs"
    )
    checksums_equal: bool | None = None


@registry.register
class MigrationAborted(_MigrationEvent):
    """The VM stays where it was (or is lost with its failed source)."""

    reason: str
    rounds: int = Field(0, ge=0)
    bytes: int = Field(0, ge=0)
    vm_lost: bool = Field(False, description="it ran nowhere after: its source failed")


@registry.register
class StartCopy(_SourceCommand):
    """Copy a file of ``size_mib`` from ``host`` to ``target`` over the network."""

    copy_id: Name
    size_mib: float = Field(gt=0, le=1024**3)


class _CopyEvent(Event):
    copy_id: Name
    source: Name
    target: Name

    def aggregate(self) -> str:
        return f"copy/{self.copy_id}"


@registry.register
class CopyStarted(_CopyEvent):
    size_mib: float = Field(gt=0)
    expected_seconds: float = Field(ge=0)


@registry.register
class CopyCompleted(_CopyEvent):
    pass


@registry.register
class CopyAborted(_CopyEvent):
    reason: str
