"""VM checkpoints: a running VM's memory, device state and disk as at one instant, saved
to the shared datastore while the VM goes on, and restored from there."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Command, Event, Name, Part, Query, Reply, registry


class _CheckpointEvent(Event):
    """Something that happened to one checkpoint of a VM on a host."""

    vm: Name
    host: Name
    checkpoint: Name

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class CheckpointVm(Command):
    """Checkpoint a running full-memory VM. It is stopped only while its disk is switched
    to a copy-on-write child and its memory is marked copy-on-write; the memory is saved
    afterwards, in the background, as it was at the stop."""

    vm: Name
    host: Name
    checkpoint: Name
    copy_parent: bool = Field(
        False,
        description="copy the disk into the checkpoint, and merge what the VM wrote during "
        "the save back into its own disk (else the disk is kept, frozen, for the checkpoint)",
    )

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class CheckpointStarted(_CheckpointEvent):
    """The VM stopped for its checkpoint: ``disk`` (what it wrote until now) is the
    checkpoint's, frozen; it goes on writing ``child_disk``. The save follows."""

    disk: str
    child_disk: str
    cpu: int = Field(ge=1)
    mem_mib: int = Field(ge=1)
    disk_gib: int = Field(ge=1)
    template: Name
    seed: int = Field(ge=0)
    copy_parent: bool = False


@registry.register
class CheckpointCompleted(_CheckpointEvent):
    """The checkpoint's file is on the datastore, whole: written, flushed and renamed into
    place before this event was appended."""

    file: str
    bytes: int = Field(ge=0)
    checksum: str = Field(description="xxh3-128 of the whole file")
    memory_checksum: str = Field(description="xxh3-128 of the guest's pages at the stop")
    device_checksum: str = Field(description="xxh3-128 of the saved device state")
    stun_ms: float = Field(ge=0, description="wall time the VM was stopped")
    save_seconds: float = Field(ge=0, description="wall time of the background save")
    pages_copied_aside: int = Field(ge=0, description="pages the guest wrote before their save")
    disk: str | None = Field(
        None, description="with copy_parent: the checkpoint's copy of the disk"
    )
    vm_disk: str | None = Field(
        None, description="with copy_parent: the disk the VM writes again, its child merged in"
    )
    disk_blocks_copied: int = Field(0, ge=0)


@registry.register
class CheckpointFailed(_CheckpointEvent):
    """The save did not finish (its hosts process stopped, the datastore filled): no
    checkpoint of this name exists. The VM keeps running on its child disk."""

    reason: str


@registry.register
class CheckpointDamaged(_CheckpointEvent):
    """A complete checkpoint's file no longer reads back as written (found missing or with
    another checksum when its hosts process started): it is kept, shown, never restored."""

    reason: str


@registry.register
class RestoreVm(Command):
    """Bring a powered-off VM back to a checkpoint of its own size: its memory and device
    state as saved, its disk a new copy-on-write child of the checkpoint's."""

    vm: Name
    host: Name
    checkpoint: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmRestored(_CheckpointEvent):
    disk: str
    memory_checksum: str


@registry.register
class DeleteCheckpoint(Command):
    """Delete a checkpoint: its file, and its disk once the VM's disk is merged back into it
    (refused while another disk is made from it)."""

    checkpoint: Name
    host: Name

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class CheckpointDeleted(_CheckpointEvent):
    disk: str = Field(description="the VM's disk from now on")


class CheckpointView(Part):
    checkpoint: Name
    vm: Name
    state: str = Field(description="saving, complete, failed or damaged")
    cpu: int
    mem_mib: int
    disk_gib: int = 0
    disk: str
    bytes: int = 0
    checksum: str | None = None
    memory_checksum: str | None = None
    stun_ms: float | None = None
    reason: str | None = None


@registry.register
class ListCheckpoints(Query):
    vm: Name | None = None

    def aggregate(self) -> str:
        return "hosts"


@registry.register
class CheckpointList(Reply):
    checkpoints: list[CheckpointView]
