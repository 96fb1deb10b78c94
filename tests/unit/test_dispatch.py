"""What a consumer does with a message whose handler fails: an outage of the broker is
no fault of the message."""

from __future__ import annotations

from schemas import Envelope, Message
from shared.bus import BusUnavailable, Delivery
from shared.bus.dedupe import RecentIds
from shared.bus.dispatch import Ack, Bury, Retry, dispatch
from tests.contract.messages import create_vm


async def test_a_handler_cut_off_from_the_broker_is_tried_again_not_buried() -> None:
    """On its last allowed delivery, a handler that fails because the broker is away (a
    leader being elected, a connection dropped) is tried again in place until it works:
    the message is handled, not dead-lettered."""
    calls = 0

    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise BusUnavailable("append failed: no stream response")

    outcome = await dispatch(
        create_vm("a").encode(),
        Delivery(seq=1, attempt=5, subject="cmd"),
        handler,
        max_deliver=5,
        retry_delay=0.01,
        seen=RecentIds(),
    )
    assert (outcome, calls) == (Ack(), 4)


async def test_a_handler_that_fails_otherwise_is_buried_on_its_last_delivery() -> None:
    async def handler(env: Envelope[Message], delivery: Delivery) -> None:
        raise RuntimeError("a bug")

    outcomes = [
        await dispatch(
            create_vm("a").encode(),
            Delivery(seq=1, attempt=attempt, subject="cmd"),
            handler,
            max_deliver=5,
            retry_delay=0.01,
            seen=RecentIds(),
        )
        for attempt in (4, 5)
    ]
    assert outcomes == [Retry(0.04), Bury("handler-failed: RuntimeError: a bug")]
