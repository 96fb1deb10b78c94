"""Fault tolerance: a protected VM keeps running when its host dies, on a backup VM on
another host that takes over with nothing lost and no output said twice.

The ``ft`` service (the FT logger/replayer) keeps each pair. It drives the primary's runs
(a protected VM does no work in its host's ticks), logs what reached it, has the backup
follow, and releases the primary's outputs only once the backup could say them too.
"""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, registry

DEFAULT_EPOCH_MS = 25


class FtMode(enum.StrEnum):
    """``record-replay``: the backup replays the primary's log of inputs;
    ``checkpoint``: the primary's dirty memory goes to the backup every epoch;
    ``lockstep``: both run the same inputs, and each output is compared before release."""

    RECORD_REPLAY = "record-replay"
    CHECKPOINT = "checkpoint"
    LOCKSTEP = "lockstep"


@registry.register
class ProtectVm(Command):
    """Protect a VM: a backup of its size is placed by its priority's scheduler, never on
    its host (on ``backup_host`` if given), and made equal to it."""

    vm: Name
    mode: FtMode = FtMode.RECORD_REPLAY
    backup_host: Name | None = None
    epoch_ms: int = Field(
        DEFAULT_EPOCH_MS, ge=1, le=60_000, description="emulated ms between sync points"
    )

    def aggregate(self) -> str:
        return "ft"


class _PairEvent(Event):
    vm: Name

    def aggregate(self) -> str:
        return f"ft/{self.vm}"


@registry.register
class ProtectionRequested(_PairEvent):
    """The pair begins: from now on the primary runs only the runs its FT service asks
    for, and its backup is being placed."""

    mode: FtMode
    primary_host: Name
    backup: Name
    backup_host: Name | None = None
    epoch_ms: int = Field(ge=1)


@registry.register
class ProtectionEnded(_PairEvent):
    """The VM is no longer protected (it was destroyed, or protection could not be set up);
    it runs in its host's ticks again."""

    reason: str
