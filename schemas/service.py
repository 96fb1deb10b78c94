"""Service lifecycle events and the typed rejection of a command."""

from __future__ import annotations

import enum
import uuid
from typing import Any

from pydantic import Field

from schemas.base import Event, Message, Name, registry
from schemas.envelope import Envelope


@registry.register
class ServiceStarted(Event):
    service: Name
    instance: str
    version: str
    rebuilt_from_seq: int
    rebuilt_events: int

    def aggregate(self) -> str:
        return f"service/{self.service}"


@registry.register
class ServiceStopped(Event):
    service: Name
    instance: str
    reason: str
    handled: int
    carried: dict[str, Any] | None = Field(
        None,
        description="what the service's decisions read besides the log (a detector's "
        "streaks, task progress), for its next start to take back",
    )

    def aggregate(self) -> str:
        return f"service/{self.service}"


class RejectionCode(enum.StrEnum):
    ALREADY_EXISTS = "already-exists"
    UNKNOWN_VM = "unknown-vm"
    UNKNOWN_HOST = "unknown-host"
    WRONG_STATE = "wrong-state"
    INSUFFICIENT_CAPACITY = "insufficient-capacity"
    BELOW_USED_MEMORY = "below-used-memory"
    PAGE_OUT_OF_RANGE = "page-out-of-range"
    SIZE_MISMATCH = "size-mismatch"
    BYTES_DIFFER = "bytes-differ"
    ACCOUNTING_ONLY = "accounting-only"
    HOST_DOWN = "host-down"
    INVALID_REQUEST = "invalid-request"
    CONTRADICTORY_RULES = "contradictory-rules"
    LAST_USABLE_HOST = "last-usable-host"
    CANNOT_EVACUATE = "cannot-evacuate"
    UNKNOWN_CLUSTER = "unknown-cluster"
    # A change to what a host runs that no reservation in the ledger covers.
    NO_RESERVATION = "no-reservation"
    DATASTORE_FULL = "datastore-full"
    UNKNOWN_CHECKPOINT = "unknown-checkpoint"
    # A checkpoint's file does not read back as it was written (its checksum differs).
    CHECKPOINT_CORRUPT = "checkpoint-corrupt"


@registry.register
class CommandRejected(Event):
    """A command that was understood but refused; nothing changed."""

    about: str
    command_id: uuid.UUID
    command_type: str
    code: RejectionCode
    reason: str

    def aggregate(self) -> str:
        return self.about

    @classmethod
    def of(cls, command: Envelope[Message], code: RejectionCode, reason: str) -> CommandRejected:
        """The refusal of ``command``, about its VM if it names one."""
        vm = getattr(command.data, "vm", None)
        return cls(
            about=f"vm/{vm}" if vm else command.subject,
            command_id=command.id,
            command_type=command.type,
            code=code,
            reason=reason,
        )


@registry.register
class CommandsIssued(Event):
    """The commands a decision sends, logged in the same atomic append as its events and
    before any is sent: a service restarted after appending but before sending finds
    them here and sends them again (their ids are fixed, so nothing is done twice)."""

    service: Name
    # Each command as its encoded envelope, exactly as it is sent.
    commands: list[str]
    # The atomic append it landed in: a service sends a batch's commands only after it,
    # and all of them before its next append, so only the last batch can be unsent.
    batch: uuid.UUID

    def aggregate(self) -> str:
        return f"outbox/{self.service}"
