"""The JetStream streams vplane needs, and why each is configured as it is."""

from __future__ import annotations

import dataclasses
import datetime

import nats.js.errors
from nats.js import JetStreamManager, api

from shared.bus.protocol import Stream

DEDUPE_WINDOW = 120.0
TELEMETRY_MAX_AGE = 15 * 60.0
TELEMETRY_PER_SUBJECT = 2_000
DEAD_LETTER_MAX_AGE = 14 * 24 * 3600.0


DATA_MAX_AGE = 15 * 60.0


def stream_configs(
    namespace: str, names: dict[Stream, str], dead_letters: str, data: str, replicas: int = 1
) -> list[api.StreamConfig]:
    configs = [
        # The log is the system's memory: no limits, so nothing is evicted, and
        # were a limit ever set, new appends fail instead of old events vanishing.
        api.StreamConfig(
            name=names[Stream.EVENTS],
            subjects=[f"{namespace}.evt.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=DEDUPE_WINDOW,
            deny_delete=True,
            deny_purge=True,
            # A decision's events land as one unit (atomic batch publish).
            allow_atomic=True,
        ),
        api.StreamConfig(
            name=names[Stream.COMMANDS],
            subjects=[f"{namespace}.cmd.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.WORK_QUEUE,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=DEDUPE_WINDOW,
            # A decision's commands are stored in one write (NatsBus.send_many).
            allow_atomic=True,
        ),
        # Telemetry is a bounded time series; memory storage keeps fsync off its path.
        api.StreamConfig(
            name=names[Stream.TELEMETRY],
            subjects=[f"{namespace}.tel.>"],
            storage=api.StorageType.MEMORY,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=TELEMETRY_MAX_AGE,
            max_msgs_per_subject=TELEMETRY_PER_SUBJECT,
        ),
        # Bulk page transfers: read soon after they are written, then of no use. Bounded by
        # age, not bytes: JetStream reserves a stream's max_bytes up front.
        api.StreamConfig(
            name=data,
            subjects=[f"{namespace}.data.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_age=DATA_MAX_AGE,
        ),
        api.StreamConfig(
            name=dead_letters,
            subjects=[f"{namespace}.dlq.>"],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=DEAD_LETTER_MAX_AGE,
            duplicate_window=DEDUPE_WINDOW,
        ),
    ]
    return [dataclasses.replace(config, num_replicas=replicas) for config in configs]


async def ensure_streams(
    jsm: JetStreamManager, configs: list[api.StreamConfig]
) -> dict[str, datetime.datetime | None]:
    """Create or update every stream (idempotent: run at start and after every reconnect,
    since a restarted broker has lost its memory-stored streams). Returns when each
    stream was created: a stream created anew numbers its messages from 1 again."""
    created: dict[str, datetime.datetime | None] = {}
    for config in configs:
        try:
            info = await jsm.add_stream(config)
        except nats.js.errors.BadRequestError:
            info = await jsm.update_stream(config)
        created[str(config.name)] = info.created
    return created
