"""Fault tolerance: a protected VM keeps running when its host dies, on a backup VM on
another host that takes over with nothing lost and no output said twice.

The ``ft`` service (the FT logger/replayer) keeps each pair. It drives the primary's runs
(a protected VM does no work in its host's ticks), logs what reached it, has the backup
follow, and releases the primary's outputs only once the backup could say them too.
"""

from __future__ import annotations

import enum

from pydantic import Field

from schemas.base import Command, Event, Name, Part, Query, Reply, registry
from schemas.memory import SentPacket

DEFAULT_EPOCH_MS = 25


class FtMode(enum.StrEnum):
    """``record-replay``: the backup replays the primary's log of inputs;
    ``checkpoint``: the pages the primary dirtied go to the backup every epoch;
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
class UnprotectRequested(_PairEvent):
    """Protection is to end (``vplane ft unprotect``), once the primary's run in flight
    is logged: then ProtectionEnded, after what the backup had not confirmed."""

    backup: Name


@registry.register
class ProtectionEnded(_PairEvent):
    """The VM is no longer protected (unprotected, destroyed, or protection could not be
    set up); it runs in its host's ticks again. Its backup goes: destroyed, or (never created) its
    room given back."""

    reason: str
    backup: Name | None = None


@registry.register
class BackupLoaded(_PairEvent):
    """The backup holds the primary's state, copied while the primary was suspended: the
    two checksums are equal. The log the backup replays starts at ``from_step``."""

    backup: Name
    backup_host: Name
    primary_checksum: str
    backup_checksum: str
    pages: int = Field(ge=0)
    bytes: int = Field(ge=0)
    from_step: int = Field(ge=0)


@registry.register
class PairSynced(_PairEvent):
    """A sync point: the backup caught up with the primary's ``entry``-th log entry (or
    epoch), and the primary's outputs up to it are released to the outside world, in
    order. ``primary_checksum`` and ``backup_checksum`` are both memories at the point
    the entry starts from; they are equal, or ``equal`` says not."""

    mode: FtMode
    entry: int = Field(ge=0)
    first_step: int = Field(ge=0)
    steps: int = Field(ge=0)
    inputs: int = Field(ge=0, description="log entries (inputs) the backup replayed")
    primary_checksum: str | None = None
    backup_checksum: str | None = None
    equal: bool
    released: list[SentPacket] = Field(default_factory=list)
    held_ms: float = Field(0.0, ge=0, description="emulated time the outputs were held")
    # Checkpoint mode: the epoch's dirty pages sent, and their bytes on the wire.
    pages: int = Field(0, ge=0)
    bytes: int = Field(0, ge=0)
    ahead_pages: int = Field(0, ge=0, description="of the pages, those sent while it ran")
    diff_pages: int = Field(0, ge=0, description="of the pages, those sent as diffs")
    whole_bytes: int = Field(0, ge=0, description="the bytes the pages take whole")


@registry.register
class FailoverRequested(_PairEvent):
    """The primary's host is gone and the backup replayed every logged run: the VM's
    scheduler moves its reservation onto the backup's host (in place of the backup's),
    and that host makes the backup the VM."""

    priority: str
    from_host: Name
    backup: Name
    backup_host: Name
    lost_at: float = Field(ge=0, description="emulated time the primary's host was lost")
    discarded: int = Field(
        0, ge=0, description="checkpoint mode: runs after the last epoch, lost with the host"
    )


@registry.register
class TakeOverVm(Command):
    """Make the backup ``backup`` on ``host`` the VM ``vm`` (whose host is gone): its
    memory, its steps, its place; the VM's reservation there covers it."""

    host: Name
    vm: Name
    backup: Name
    from_host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmFailedOver(Event):
    """The VM runs on ``host`` now, from its backup's memory: what its old host ran of it
    after the last logged run is lost, and was never said outside."""

    vm: Name
    host: Name
    from_host: Name
    backup: Name
    checksum: str | None = None

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class OutputsReleased(_PairEvent):
    """Outputs of a protected VM released with no backup to wait for: while its backup is
    set up (after a failover too), and those its lost backup had not confirmed (the VM
    runs unprotected until a new backup holds its state)."""

    entry: int = Field(ge=0, description="the first log entry (run) they come from")
    first_step: int = Field(ge=0)
    steps: int = Field(ge=0)
    released: list[SentPacket] = Field(default_factory=list)


@registry.register
class PairDiverged(_PairEvent):
    """The backup said otherwise than the primary (an output, or its memory at a sync
    point): the outputs from there on are held, the primary is paused, and the backup is
    made the primary's copy again. Outputs before the difference that both said leave."""

    mode: FtMode
    entry: int = Field(ge=0)
    first_step: int = Field(ge=0)
    primary_checksum: str | None = None
    backup_checksum: str | None = None
    first_different: int | None = Field(None, ge=1, description="the first output that differs")
    released: list[SentPacket] = Field(default_factory=list)


@registry.register
class PairResynced(_PairEvent):
    """The backup is the primary's copy again (equal checksums): the outputs held since
    the divergence leave now, in order."""

    primary_checksum: str
    backup_checksum: str
    pages: int = Field(ge=0)
    bytes: int = Field(ge=0)
    released: list[SentPacket] = Field(default_factory=list)


@registry.register
class UnprotectVm(Command):
    """End a VM's protection: the outputs its backup had not confirmed leave, its backup
    is destroyed (its room given back), and it runs in its host's ticks again."""

    vm: Name

    def aggregate(self) -> str:
        return "ft"


@registry.register
class DivergeBackup(Command):
    """Fault injection: flip bytes of a protected VM's backup (its execution state), so that
    it says otherwise than its primary from its next output on."""

    vm: Name

    def aggregate(self) -> str:
        return "ft"


@registry.register
class DivergenceInjected(_PairEvent):
    backup: Name
    backup_host: Name
    page: int = Field(ge=0)
    offset: int = Field(ge=0)
    count: int = Field(ge=1)


@registry.register
class GetFtStatus(Query):
    """Every protected VM and how its protection stands."""

    def aggregate(self) -> str:
        return "ft"


class FtPairView(Part):
    vm: Name
    mode: FtMode
    phase: str
    primary_host: Name
    backup: Name
    backup_host: Name | None
    log_lag: int = Field(ge=0, description="log entries the backup has not replayed yet")
    entries: int = Field(ge=0, description="log entries (or epochs) synced")
    bytes: int = Field(ge=0, description="bytes sent to the backup")
    held_outputs: int = Field(ge=0)
    released_outputs: int = Field(ge=0)
    divergences: int = Field(ge=0)
    failovers: int = Field(ge=0)


@registry.register
class FtStatus(Reply):
    pairs: list[FtPairView]
