"""Queries as effects: an outcome asks, the runtime asks without the decision lock, and
the reply (or a QueryFailed when none came) comes back to the service as an input."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

import shared.runtime
from schemas import Envelope, Message, Reply
from schemas.queries import HostList, ListHosts, QueryFailed
from schemas.service import ServiceStopped
from schemas.vm import CreateVm, VmCreated
from shared.bus import BusUnavailable
from shared.bus.memory import MemoryBus
from shared.loops import Loop
from shared.outcome import Outcome, answer
from shared.runtime import NoReplies, Runtime, ServiceDefinition
from shared.testing import eventually, running

Asked = tuple[Envelope[Message], Envelope[Message]]


def made(vm: str) -> VmCreated:
    return VmCreated(vm=vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=True)


class Asker:
    """Asks ListHosts from its first ``steps`` loop steps (``per_step`` each) and, when
    ``ask_on_commands``, with its answer to a CreateVm; answers the n-th reply it is
    handed with a VmCreated named ``replied-n`` (after failing the first ``failing``)."""

    def __init__(self, steps: int = 0, per_step: int = 1, *, ask_on_commands: bool = False):
        self.steps = steps
        self.per_step = per_step
        self.ask_on_commands = ask_on_commands
        self.failing = 0
        self.vms: list[str] = []
        self.replies: list[Asked] = []

    def definition(self) -> ServiceDefinition:
        def fold(_seq: int, env: Envelope[Message]) -> None:
            if isinstance(env.data, VmCreated):
                self.vms.append(env.data.vm)

        async def step() -> Outcome | None:
            if not self.steps:
                return None
            self.steps -= 1
            return Outcome(queries=[ListHosts()] * self.per_step, key="ask")

        async def decide(env: Envelope[Message]) -> Outcome:
            assert isinstance(env.data, CreateVm)
            queries = [ListHosts()] if self.ask_on_commands else []
            return Outcome(events=[made(env.data.vm)], cause=env, queries=queries)

        async def replied(asked: Envelope[Message], reply: Envelope[Message]) -> Outcome:
            self.replies.append((asked, reply))
            if self.failing:
                self.failing -= 1
                raise RuntimeError("cannot read this reply")
            return answer(reply, made(f"replied-{len(self.replies)}"))

        return ServiceDefinition(
            name="asker",
            fold=fold,
            fold_filters=("vm.>",),
            decide=decide,
            commands={"asker-commands": ("hosts.>",)},
            loops=[Loop("asks", step, every=0.01)],
            replies=replied,
        )


async def hosts(_env: Envelope[Message]) -> Reply:
    return HostList(hosts=[])


async def never(_env: Envelope[Message]) -> Reply:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def create(vm: str) -> Envelope[CreateVm]:
    return Envelope.wrap(CreateVm(vm=vm, cpu=1, mem_mib=64), producer="test")


async def logged(bus: MemoryBus) -> list[Envelope[Message]]:
    return [e.envelope async for e in bus.replay() if e.envelope is not None]


def test_an_outcome_that_only_asks_is_not_empty() -> None:
    """Asking is an effect: an outcome with queries alone still has work to carry out."""
    assert not Outcome(queries=[ListHosts()]).empty
    assert Outcome().empty


async def test_a_step_asks_a_query_and_decides_on_its_reply() -> None:
    """A loop step's outcome asks; a served target answers; the replies handler gets the
    query as asked (by the service, at its clock's time) with the reply to it, and the
    event it answers with lands in the log."""
    bus = MemoryBus()
    await bus.append(Envelope.wrap(made("before"), producer="elsewhere", sim_time=42.0))
    await bus.serve("hosts", hosts)
    svc = Asker(steps=1)
    runtime = Runtime(svc.definition(), bus, "i1")
    async with running(runtime):
        await eventually(lambda: "replied-1" in svc.vms, what="the event decided on the reply")
    [(asked, reply)] = svc.replies
    assert isinstance(asked.data, ListHosts)
    assert (asked.producer, asked.sim_time, asked.causation_id) == ("asker", 42.0, None)
    assert isinstance(reply.data, HostList)
    assert reply.causation_id == asked.id
    assert (runtime.asked, runtime.asks_failed, runtime.replies_failed) == (1, 0, 0)
    assert "replied-1" in [getattr(e.data, "vm", "") for e in await logged(bus)]


async def test_a_query_asked_by_a_command_is_asked_after_its_answer_and_keeps_its_chain() -> None:
    """A command's answer asks: the query goes out once the answer is in the log; the
    query is caused by the command, the reply by the query, the event decided on it by
    the reply, all in the command's workflow (its correlation id)."""
    bus = MemoryBus()
    in_log_when_asked: list[list[str]] = []

    async def listing(_env: Envelope[Message]) -> Reply:
        in_log_when_asked.append([getattr(e.data, "vm", "") for e in await logged(bus)])
        return HostList(hosts=[])

    await bus.serve("hosts", listing)
    svc = Asker(ask_on_commands=True)
    cmd = create("web")
    async with running(Runtime(svc.definition(), bus, "i1")):
        await bus.send(cmd)
        await eventually(lambda: "replied-1" in svc.vms, what="the event decided on the reply")
    assert ["web" in vms for vms in in_log_when_asked] == [True]
    [(asked, reply)] = svc.replies
    [decided] = [e for e in await logged(bus) if getattr(e.data, "vm", "") == "replied-1"]
    assert asked.causation_id == cmd.id
    assert reply.causation_id == asked.id
    assert decided.causation_id == reply.id
    assert {asked.correlation_id, reply.correlation_id, decided.correlation_id} == {cmd.id}


class Unreachable(MemoryBus):
    """A memory bus whose broker is away for queries."""

    async def request(
        self,
        env: Envelope[Any],  # noqa: ARG002 - the Bus protocol's signature
        *,
        timeout: float = 5.0,  # noqa: ARG002
    ) -> Envelope[Message]:
        raise BusUnavailable("connection lost")


async def nobody_serves(_bus: MemoryBus) -> None:
    return None


async def a_handler_raises(bus: MemoryBus) -> None:
    async def broken(_env: Envelope[Message]) -> Reply:
        raise RuntimeError("projection gone")

    await bus.serve("hosts", broken)


async def nobody_answers_in_time(bus: MemoryBus) -> None:
    await bus.serve("hosts", never)


@pytest.mark.parametrize(
    ("bus_type", "serve", "reason"),
    [
        (MemoryBus, nobody_serves, "nobody answers queries to hosts"),
        (MemoryBus, a_handler_raises, "RuntimeError: projection gone"),
        (MemoryBus, nobody_answers_in_time, "no answer to ListHosts within 0.05s"),
        (Unreachable, nobody_serves, "BusUnavailable: connection lost"),
    ],
    ids=["no-responder", "handler-raises", "timeout", "broker-away"],
)
async def test_a_query_without_an_answer_comes_back_as_query_failed(
    bus_type: type[MemoryBus],
    serve: Callable[[MemoryBus], Awaitable[None]],
    reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """However the ask fails, the replies handler is handed a QueryFailed reply to the
    query, saying why, and decides on it; the failure is counted."""
    monkeypatch.setattr(shared.runtime, "QUERY_TIMEOUT_SECONDS", 0.05)
    bus = bus_type()
    await serve(bus)
    svc = Asker(steps=1)
    runtime = Runtime(svc.definition(), bus, "i1")
    async with running(runtime):
        await eventually(lambda: "replied-1" in svc.vms, what="the decision on the failure")
    [(asked, reply)] = svc.replies
    assert reply.data == QueryFailed(reason=reason)
    assert reply.causation_id == asked.id
    assert (runtime.asked, runtime.asks_failed) == (1, 1)


async def test_the_decision_lock_is_free_while_replies_are_awaited() -> None:
    """A step's two queries wait at a slow server together, and meanwhile the service
    answers a command; once the server answers, both replies are decided on."""
    bus = MemoryBus()
    release = asyncio.Event()
    waiting = 0

    async def slow(_env: Envelope[Message]) -> Reply:
        nonlocal waiting
        waiting += 1
        await release.wait()
        return HostList(hosts=[])

    await bus.serve("hosts", slow)
    svc = Asker(steps=1, per_step=2)
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: waiting == 2, what="both queries at the server")
        await bus.send(create("web"))
        await eventually(lambda: "web" in svc.vms, what="the command answered meanwhile")
        assert svc.replies == []
        release.set()
        await eventually(lambda: len(svc.replies) == 2, what="both replies decided on")
    # Two asks of one outcome, told apart by their ids.
    assert len({asked.id for asked, _ in svc.replies}) == 2


async def test_a_replies_handler_that_fails_is_counted_and_the_service_goes_on() -> None:
    """The handler raises on the first reply: that is logged and counted, the service
    stays up and healthy, and the next reply is decided on as usual."""
    bus = MemoryBus()
    await bus.serve("hosts", hosts)
    svc = Asker(steps=2)
    svc.failing = 1
    runtime = Runtime(svc.definition(), bus, "i1")
    with capture_logs() as logs:
        async with running(runtime):
            await eventually(lambda: "replied-2" in svc.vms, what="the second reply's event")
            assert runtime.healthy
    assert (runtime.asked, runtime.asks_failed, runtime.replies_failed) == (2, 0, 1)
    assert "replied-1" not in svc.vms
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["deciding on a reply failed"]


async def test_an_outcome_that_asks_without_a_replies_handler_fails_loudly() -> None:
    """A service with no replies handler whose outcome asks gets NoReplies naming the
    query, before any of the outcome's events land: its answers could never be heard."""
    bus = MemoryBus()
    runtime = Runtime(ServiceDefinition(name="mute"), bus, "i1")
    with pytest.raises(NoReplies, match="mute asks ListHosts but has no replies handler"):
        await runtime.carry_out(Outcome(events=[made("x")], queries=[ListHosts()], key="k"))
    assert await logged(bus) == []


async def test_stopping_with_a_query_in_flight_cancels_it_cleanly() -> None:
    """The service stops while its query waits for a server that never answers: the ask
    is cancelled (the server sees it go), the service stops as usual, no reply is decided
    on, and no task is left pending or destroyed pending."""
    loop = asyncio.get_running_loop()
    troubles: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: troubles.append(context))
    bus = MemoryBus()
    arrived, gone = asyncio.Event(), asyncio.Event()

    async def stuck(env: Envelope[Message]) -> Reply:
        arrived.set()
        try:
            return await never(env)
        except asyncio.CancelledError:
            gone.set()
            raise

    await bus.serve("hosts", stuck)
    svc = Asker(steps=1)
    try:
        async with running(Runtime(svc.definition(), bus, "i1")):
            await asyncio.wait_for(arrived.wait(), 5)
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert gone.is_set()
    assert svc.replies == []
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("ask-")] == []
    assert troubles == []
    assert [type(e.data) for e in await logged(bus)][-1] is ServiceStopped
