"""Atomic appends on RabbitMQ: a batch of events is one message of the log stream.

One message lands whole or not at all, so a batch needs no protocol of its own:
every reader expands it into its events. An event's sequence is built from its
message's stream offset and its place in the message, ``(offset + 1) * SLOTS +
position`` (a single event being a batch of one), so sequences increase along the
log and every sequence names the offset to read from.

A conditional batch carries its expectations, and the log decides: every log index
judges it at its place in the log against the versions the events before it left
(the same verdict in every process, since all read the same log in the same order).
The first writer wins; a batch whose expectations failed is skipped by every reader.

A single event without an expectation is published as it always was: its envelope
is the body. Anything else has a ``BATCH_HEADER`` giving the length of a JSON prefix
of the body that names each event's subject, id and size, and the expectations; the
envelopes follow, back to back. Extra routing keys (``BCC``, removed by the broker)
bring the one message to every queue bound to any of its subjects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope
from shared.bus import subjects
from shared.bus.dispatch import entry_of
from shared.bus.protocol import BATCH_LIMIT, Logged

SLOTS = 1024
assert BATCH_LIMIT <= SLOTS
BATCH_HEADER = "x-vplane-batch"


def seq_of(offset: int, position: int = 0) -> int:
    return (offset + 1) * SLOTS + position


def selected(subject: str, patterns: tuple[str, ...]) -> bool:
    return any(subjects.matches(p, subject) for p in patterns)


def offset_of(seq: int) -> int:
    """The stream offset of the message that holds (or would hold) sequence ``seq``."""
    return max(seq // SLOTS - 1, 0)


@dataclass(frozen=True, slots=True)
class Batch:
    """The events of one log message: routing keys, ids, bodies, expectations."""

    subjects: tuple[str, ...]
    ids: tuple[str, ...]
    bodies: tuple[bytes, ...]
    # Position in the batch -> the version the event's aggregate must be at.
    expected: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Packed:
    routing_key: str
    body: bytes
    msg_id: str
    headers: dict[str, Any]


def pack(namespace: str, envs: list[Envelope[Any]], expected: Mapping[int, int]) -> Packed:
    keys = [subjects.event_subject(namespace, env) for env in envs]
    ids = [str(env.id) for env in envs]
    if len(envs) == 1 and not expected:
        return Packed(keys[0], envs[0].encode(), ids[0], {})
    bodies = [env.encode() for env in envs]
    meta = json.dumps(
        {
            "s": keys,
            "i": ids,
            "z": [len(b) for b in bodies],
            "e": {str(pos): version for pos, version in expected.items()},
        },
        separators=(",", ":"),
    ).encode()
    headers: dict[str, Any] = {BATCH_HEADER: str(len(meta))}
    others = sorted(set(keys) - {keys[0]})
    if others:
        headers["BCC"] = others
    return Packed(keys[0], meta + b"".join(bodies), ids[0], headers)


def unpack(routing_key: str, msg_id: str, headers: Mapping[str, Any], body: bytes) -> Batch:
    size = headers.get(BATCH_HEADER)
    if size is None:
        return Batch((routing_key,), (msg_id,), (body,))
    try:
        start = int(size if isinstance(size, int | str) else 0)
        meta = json.loads(body[:start])
        bodies = []
        for length in meta["z"]:
            bodies.append(body[start : start + length])
            start += length
        expected = {int(pos): int(version) for pos, version in meta["e"].items()}
        return Batch(tuple(meta["s"]), tuple(meta["i"]), tuple(bodies), expected)
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not written by pack: one opaque entry, the same for every reader.
        return Batch((routing_key,), (msg_id,), (body,))


def events_of(
    offset: int, batch: Batch, patterns: tuple[str, ...], from_seq: int = 0
) -> list[Logged]:
    """The events of the log message at ``offset`` from ``from_seq`` on, selected."""
    base = seq_of(offset)
    return [
        entry_of(base + pos, subject, body)
        for pos, (subject, body) in enumerate(zip(batch.subjects, batch.bodies, strict=True))
        if base + pos >= from_seq and selected(subject, patterns)
    ]
