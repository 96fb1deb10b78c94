"""Bytes to typed envelopes and back, with a reason for everything that fails."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from schemas import Envelope, Message, registry
from schemas.envelope import MAX_ENVELOPE_BYTES, envelope_class

# ``{"id":"<uuid>","type":"<name>",``: how every envelope of ours begins.
_ENCODED_TYPE = re.compile(rb'\{"id":"[0-9a-f-]{36}","type":"([A-Za-z0-9]{1,80})",')


class MessageError(Exception):
    """Root of every decoding error; ``reason`` is the dead-letter reason code."""

    reason = "invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def describe(self) -> str:
        return f"{self.reason}: {self.detail}"


class OversizedMessage(MessageError):
    reason = "oversized"


class UndecodableMessage(MessageError):
    reason = "undecodable"


class InvalidMessage(MessageError):
    reason = "invalid"


class UnknownMessageType(MessageError):
    reason = "unknown-type"


def decode(raw: bytes) -> Envelope[Message]:
    """Decode one envelope; raise a :class:`MessageError` saying why not."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise OversizedMessage(f"{len(raw)} bytes, limit {MAX_ENVELOPE_BYTES}")
    return _as_encoded(raw) or _parsed(raw)


def encoded_type(raw: bytes) -> str | None:
    """The type of an envelope as ``Envelope.encode`` writes it, read without decoding
    it; None for anything else (which only decoding tells)."""
    found = _ENCODED_TYPE.match(raw)
    return None if found is None else found[1].decode()


def _as_encoded(raw: bytes) -> Envelope[Message] | None:
    """An envelope as ``Envelope.encode`` writes it (its type near the start), parsed and
    validated in one pass: half the cost of parsing first. Anything else (or anything
    wrong) is left to the full path, which says why."""
    found = _ENCODED_TYPE.match(raw)
    cls = None if found is None else registry.get(found[1].decode())
    if cls is None:
        return None
    try:
        env = envelope_class(cls).model_validate_json(raw)
    except ValidationError:
        return None
    return None if env.schema_version > cls.schema_version else env


def _parsed(raw: bytes) -> Envelope[Message]:
    try:
        obj: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise UndecodableMessage(f"not JSON: {err}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"envelope must be an object, got {type(obj).__name__}")
    type_name = obj.get("type")
    if not isinstance(type_name, str):
        raise InvalidMessage("envelope has no string 'type'")
    cls = registry.get(type_name)
    if cls is None:
        raise UnknownMessageType(f"no message type {type_name[:80]!r}")
    version = obj.get("schema_version")
    if isinstance(version, int) and version > cls.schema_version:
        raise InvalidMessage(
            f"{type_name} schema_version {version} is newer than {cls.schema_version}"
        )
    try:
        return envelope_class(cls).model_validate(obj)
    except ValidationError as err:
        raise InvalidMessage(_summarise(err)) from None


def _summarise(err: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()[:5]
    ]
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
