"""Fuzzing the consumer: every bad message is dead-lettered and the next one still handled."""

from __future__ import annotations

import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Envelope, Message
from schemas.envelope import MAX_ENVELOPE_BYTES
from shared.bus import Bus, ConsumerSpec, Delivery, Stream
from shared.testing import eventually, poll
from tests.contract.messages import vm_created

_good = json.loads(vm_created().encode())

bad_payloads = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    st.text(min_size=1, max_size=12).map(
        lambda t: json.dumps({**_good, "type": f"Unknown{t}"}).encode()
    ),
    st.integers().map(lambda n: json.dumps({**_good, "data": {"vm": n}}).encode()),
    st.integers(1, 4).map(lambda k: b'"' + b"x" * (MAX_ENVELOPE_BYTES + k) + b'"'),
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(bad_payloads, min_size=1, max_size=6))
async def test_bad_messages_go_to_dead_letters_and_processing_continues(
    bus: Bus, payloads: list[bytes]
) -> None:
    """Random bytes, JSON of the wrong shape, unknown types and oversized payloads each
    land in the dead-letter subject with a reason; the valid event after them is handled."""
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    subject = f"vm.{name}"
    for raw in payloads:
        await bus.publish_raw(Stream.EVENTS, subject, raw)
    good = vm_created(name)
    await bus.append(good)
    handled: list[Envelope[Message]] = []

    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        handled.append(env)

    spec = ConsumerSpec(name=name, stream=Stream.EVENTS, filters=(subject,))
    sub = await bus.consume(spec, handler)
    try:
        await eventually(lambda: len(handled) == 1, what="the valid event")
        assert handled[0].id == good.id
        dead = await poll(
            lambda: bus.dead_letters(name), lambda d: len(d) == len(payloads), what="dead letters"
        )
        assert [d.data for d in dead] == payloads
        assert all(d.reason and d.delivery_count == 1 for d in dead)
    finally:
        await sub.stop()
