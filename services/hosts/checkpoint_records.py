"""What the log says of each checkpoint: pure records the hosts' fold keeps."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from schemas import Envelope, Message
from schemas.checkpoints import CheckpointCompleted, CheckpointStarted, CheckpointView


class CheckpointState(enum.StrEnum):
    SAVING = "saving"
    COMPLETE = "complete"
    FAILED = "failed"
    DAMAGED = "damaged"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    name: str
    vm: str
    host: str
    # The disk frozen for it, and the child its VM went on writing.
    disk: str
    child_disk: str
    cpu: int
    mem_mib: int
    disk_gib: int
    template: str
    seed: int
    # Its disk is a copy of the VM's (else the VM's, frozen, which the VM's disk is made from).
    copied: bool = False
    # Asked to copy its disk (done once ``copied``).
    copy_parent: bool = False
    state: CheckpointState = CheckpointState.SAVING
    file: str = ""
    bytes: int = 0
    checksum: str | None = None
    memory_checksum: str | None = None
    stun_ms: float | None = None
    reason: str | None = None
    # The CheckpointStarted: how the save ends is caused by it, in the same workflow.
    cause: Envelope[Message] | None = None

    @classmethod
    def started(cls, event: CheckpointStarted, env: Envelope[Message] | None = None) -> Checkpoint:
        return cls(
            cause=env,
            name=event.checkpoint,
            vm=event.vm,
            host=event.host,
            disk=event.disk,
            child_disk=event.child_disk,
            cpu=event.cpu,
            mem_mib=event.mem_mib,
            disk_gib=event.disk_gib,
            template=event.template,
            seed=event.seed,
            copy_parent=event.copy_parent,
        )

    def completed(self, event: CheckpointCompleted) -> Checkpoint:
        return replace(
            self,
            disk=event.disk or self.disk,
            copied=event.disk is not None,
            state=CheckpointState.COMPLETE,
            file=event.file,
            bytes=event.bytes,
            checksum=event.checksum,
            memory_checksum=event.memory_checksum,
            stun_ms=event.stun_ms,
        )

    def view(self) -> CheckpointView:
        return CheckpointView(
            checkpoint=self.name,
            vm=self.vm,
            state=self.state.value,
            cpu=self.cpu,
            mem_mib=self.mem_mib,
            disk_gib=self.disk_gib,
            disk=self.disk,
            bytes=self.bytes,
            checksum=self.checksum,
            memory_checksum=self.memory_checksum,
            stun_ms=self.stun_ms,
            reason=self.reason,
        )
