"""The one envelope every message travels in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar, cast

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    StringConstraints,
    model_validator,
)

from schemas.base import Message

# Envelopes stay small; bulk bytes (guest pages) travel on data subjects instead.
MAX_ENVELOPE_BYTES = 256 * 1024

# Covariant: envelopes are frozen, so an Envelope[VmCreated] is an Envelope[Message].
M_co = TypeVar("M_co", bound=Message, covariant=True)

# ``vm/web-1``, ``host/h3``, ``hosts``: an aggregate kind and, usually, its id.
Subject = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,31}(/[A-Za-z0-9][A-Za-z0-9_-]{0,62})*$")
]


class Envelope(BaseModel, Generic[M_co]):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID
    type: str
    schema_version: int
    subject: Subject
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    occurred_at: AwareDatetime
    sim_time: float = 0.0
    producer: str
    data: SerializeAsAny[M_co]

    @model_validator(mode="after")
    def _type_matches_data(self) -> Envelope[M_co]:
        if self.type != self.data.type_name():
            raise ValueError(f"type {self.type!r} does not match data {self.data.type_name()!r}")
        return self

    @classmethod
    def wrap(
        cls,
        data: M_co,  # type: ignore[misc]  # a classmethod factory, not a mutation
        *,
        producer: str,
        subject: str | None = None,
        caused_by: Envelope[Any] | None = None,
        sim_time: float = 0.0,
        id: uuid.UUID | None = None,
    ) -> Envelope[M_co]:
        """Put ``data`` in an envelope; ``caused_by`` links it into its workflow."""
        msg_id = id or uuid.uuid4()
        env = envelope_class(type(data))(
            id=msg_id,
            type=data.type_name(),
            schema_version=data.schema_version,
            subject=subject if subject is not None else data.aggregate(),
            correlation_id=caused_by.correlation_id if caused_by else msg_id,
            causation_id=caused_by.id if caused_by else None,
            occurred_at=datetime.now(UTC),
            sim_time=sim_time,
            producer=producer,
            data=data,
        )
        return cast("Envelope[M_co]", env)

    def derived_id(self, index: int = 0) -> uuid.UUID:
        """A deterministic id for the ``index``-th message caused by this one.

        A handler that runs twice for the same message produces the same ids,
        so the log's deduplication keeps only one copy of each fact.
        """
        return uuid.uuid5(self.id, str(index))

    def encode(self) -> bytes:
        """The envelope as it travels; ``EnvelopeTooLarge`` rather than bytes no reader
        would take (the log would keep an entry nobody can fold)."""
        raw = self.model_dump_json().encode()
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise EnvelopeTooLarge(
                f"a {self.type} envelope of {len(raw)} bytes, limit {MAX_ENVELOPE_BYTES}: "
                "bulk bytes travel on data flows, long lists in several messages"
            )
        return raw


class EnvelopeTooLarge(ValueError):
    """A message too large to send: its readers would refuse it."""


# Pydantic keeps a parametrised generic only weakly: after a collection, Envelope[X] is
# built again (~1 ms instead of ~15 us a wrap). Hold each one for the process's life.
_ENVELOPES: dict[type[Message], type[Envelope[Any]]] = {}


def envelope_class(kind: type[Message]) -> type[Envelope[Any]]:
    klass = _ENVELOPES.get(kind)
    if klass is None:
        klass = _ENVELOPES[kind] = Envelope[kind]  # type: ignore[valid-type]
    return klass
