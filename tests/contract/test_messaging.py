"""Request/reply queries, telemetry, and following a stream without a durable cursor."""

from __future__ import annotations

import pytest

from schemas import Envelope, Message, Reply
from schemas.queries import HostList, ListHosts, ListVms
from shared.bus import Bus, Logged, PoisonMessage, RequestFailed, Stream
from shared.testing import eventually
from tests.contract.messages import sample, vm_created


async def test_query_is_answered_by_its_server(bus: Bus) -> None:
    """A request reaches the server of its target and its reply comes back, linked to it."""

    async def serve(env: Envelope[Message]) -> Reply:
        assert isinstance(env.data, ListHosts)
        return HostList(hosts=[])

    await bus.serve("hosts", serve)
    question = Envelope.wrap(ListHosts(), producer="test")
    reply = await bus.request(question, timeout=5)
    assert reply.data == HostList(hosts=[])
    assert reply.causation_id == question.id
    assert reply.correlation_id == question.correlation_id


async def test_query_without_server_fails_clearly(bus: Bus) -> None:
    """A query nobody serves raises RequestFailed instead of hanging."""
    with pytest.raises(RequestFailed):
        await bus.request(Envelope.wrap(ListVms(), producer="test"), timeout=1)


async def test_query_handler_failure_becomes_an_error_reply(bus: Bus) -> None:
    """A server whose handler raises answers with the reason, and keeps serving."""
    calls = []

    async def serve(env: Envelope[Message]) -> Reply:
        calls.append(env.type)
        if len(calls) == 1:
            raise ValueError("projection not ready")
        return HostList(hosts=[])

    await bus.serve("hosts", serve)
    with pytest.raises(RequestFailed, match="projection not ready"):
        await bus.request(Envelope.wrap(ListHosts(), producer="test"))
    reply = await bus.request(Envelope.wrap(ListHosts(), producer="test"))
    assert isinstance(reply.data, HostList)


async def test_telemetry_is_seen_by_a_watcher(bus: Bus) -> None:
    """Telemetry samples published after a watcher starts reach it in order."""
    seen: list[Logged] = []

    async def on_sample(entry: Logged) -> None:
        seen.append(entry)

    await bus.watch(Stream.TELEMETRY, ("host.>",), on_sample)
    for tick in range(3):
        await bus.emit(sample(tick=tick))
    await eventually(lambda: len(seen) == 3, what="3 samples")
    assert [e.envelope.data.tick for e in seen] == [0, 1, 2]  # type: ignore[union-attr]


async def test_watch_follows_the_log_from_a_sequence(bus: Bus) -> None:
    """A watcher started at a sequence sees the events from there on, then new ones."""
    first = await bus.append(vm_created("a"))
    await bus.append(vm_created("b"))
    seen: list[str] = []

    async def on_event(entry: Logged) -> None:
        assert entry.envelope is not None
        seen.append(entry.envelope.data.vm)  # type: ignore[attr-defined]

    watcher = await bus.watch(Stream.EVENTS, (), on_event, from_seq=first.seq + 1)
    await bus.append(vm_created("c"))
    await eventually(lambda: seen == ["b", "c"], what="events b and c")
    await watcher.stop()


async def test_query_refused_by_its_handler_says_why(bus: Bus) -> None:
    """A handler that refuses a question (PoisonMessage) answers with its own words."""

    async def serve(env: Envelope[Message]) -> Reply:
        raise PoisonMessage("no VM nope on these hosts")

    await bus.serve("hosts", serve)
    with pytest.raises(RequestFailed) as caught:
        await bus.request(Envelope.wrap(ListHosts(), producer="test"))
    assert str(caught.value) == "no VM nope on these hosts"
