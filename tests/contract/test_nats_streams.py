"""How vplane's JetStream streams are configured: the log keeps everything, telemetry is bounded."""

from __future__ import annotations

import pytest
from nats.js import api

from shared.bus.nats import NatsBus
from shared.bus.nats_streams import TELEMETRY_MAX_AGE, TELEMETRY_PER_SUBJECT
from shared.testing import unique_namespace

pytestmark = pytest.mark.broker


async def test_streams_are_created_idempotently_with_their_guarantees(nats_url: str) -> None:
    """Starting twice keeps the streams; the event log is on disk with no limit that could
    evict an event, the work queue is a work queue, and telemetry is bounded."""
    namespace = unique_namespace()
    first = NatsBus(nats_url, namespace)
    await first.start()
    await first.close()
    bus = NatsBus(nats_url, namespace)
    await bus.start()
    try:
        jsm = bus.nc.jsm()
        prefix = namespace.upper()
        events = (await jsm.stream_info(f"{prefix}_EVENTS")).config
        assert events.storage == api.StorageType.FILE
        assert events.retention == api.RetentionPolicy.LIMITS
        assert events.discard == api.DiscardPolicy.NEW
        assert (events.max_msgs, events.max_bytes, events.max_age) in {(-1, -1, 0), (-1, -1, None)}
        assert events.deny_delete
        assert events.deny_purge
        assert (events.duplicate_window or 0) > 0

        commands = (await jsm.stream_info(f"{prefix}_COMMANDS")).config
        assert commands.retention == api.RetentionPolicy.WORK_QUEUE
        assert commands.storage == api.StorageType.FILE

        telemetry = (await jsm.stream_info(f"{prefix}_TELEMETRY")).config
        assert telemetry.max_age == TELEMETRY_MAX_AGE
        assert telemetry.max_msgs_per_subject == TELEMETRY_PER_SUBJECT
        assert telemetry.discard == api.DiscardPolicy.OLD

        dead = (await jsm.stream_info(f"{prefix}_DEADLETTERS")).config
        assert dead.storage == api.StorageType.FILE
    finally:
        await bus.close()


async def test_data_flows_read_one_after_another_leave_no_consumer_behind(nats_url: str) -> None:
    """More flows than a stream keeps consumers (1,000) are read within a minute, as an
    FT pair's checkpoint epochs read theirs (two flows an epoch): each read deletes its
    ephemeral consumer instead of leaving it to expire."""
    bus = NatsBus(nats_url, unique_namespace())
    await bus.start()
    try:
        for n in range(1_100):
            await bus.put_data(f"epoch-{n}", [n.to_bytes(4, "little")])
            got = [chunk async for chunk in bus.read_data(f"epoch-{n}", 1, timeout=10)]
            assert got == [n.to_bytes(4, "little")]
        data = await bus.nc.jsm().stream_info(f"{bus.namespace.upper()}_DATA")
        assert data.state.consumer_count == 0
    finally:
        await bus.close()
