"""Live migrations and network file copies as the hosts carry them out.

A scheduler reserves the capacity and bandwidth first, then asks the source host to
start; the host answers at once that it started and, when the emulated transfer time
has passed, that it completed (or that it aborted, when an end failed meanwhile).
"""

from __future__ import annotations

from pydantic import Field

from schemas.base import Command, Event, Name, registry


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


class _MigrationEvent(Event):
    migration: Name
    vm: Name
    source: Name
    target: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class MigrationStarted(_MigrationEvent):
    expected_seconds: float = Field(ge=0, description="emulated seconds until it completes")


@registry.register
class MigrationCompleted(_MigrationEvent):
    """The VM runs on the target now."""


@registry.register
class MigrationAborted(_MigrationEvent):
    """The VM stays where it was (or is lost with its failed source)."""

    reason: str


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
