"""The runtime carries outcomes out: whole answers, commands after their cause, the
outbox after a crash, and supervised loops; on a bus that fails on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from schemas import Envelope, Message
from schemas.pool import CapacityReleased, CapacityReserved, Owner
from schemas.service import CommandsIssued
from schemas.vm import CreateVm, PowerOnVm, VmCreated
from shared.bus import AppendResult, BusUnavailable, ConcurrencyError
from shared.bus.memory import MemoryBus
from shared.loops import Loop
from shared.outcome import Outcome, answer
from shared.runtime import Runtime, ServiceDefinition, ServiceFailed
from shared.testing import eventually, running


class FaultyBus(MemoryBus):
    """A memory bus whose next appends or sends fail, and that remembers, for every
    command it sends, how far the log was then."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_appends = 0
        self.failing_sends = 0
        self.sent: list[tuple[Envelope[Any], int]] = []

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        if self.failing_appends:
            self.failing_appends -= 1
            raise BusUnavailable("the broker went away during the append")
        return await super().append_batch(envs, expected=expected)

    async def send(self, env: Envelope[Any]) -> None:
        if env.producer != "test" and self.failing_sends:
            self.failing_sends -= 1
            raise BusUnavailable("the broker went away during the send")
        if env.producer != "test":
            self.sent.append((env, await self.last_seq()))
        await super().send(env)


def created(vm: str) -> VmCreated:
    return VmCreated(vm=vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=False)


class Starter:
    """Answers CreateVm with three events and asks for the VM to be powered on."""

    def __init__(self) -> None:
        self.vms: list[str] = []

    def definition(self, loops: list[Loop] | None = None) -> ServiceDefinition:
        def fold(_seq: int, env: Envelope[Message]) -> None:
            if isinstance(env.data, VmCreated):
                self.vms.append(env.data.vm)

        async def decide(env: Envelope[Message]) -> Outcome:
            assert isinstance(env.data, CreateVm)
            vm = env.data.vm
            events = [created(f"{vm}-a"), created(f"{vm}-b"), created(f"{vm}-c")]
            return answer(env, *events, commands=[PowerOnVm(vm=f"{vm}-a", host="h1")])

        return ServiceDefinition(
            name="starter",
            fold=fold,
            fold_filters=("vm.>",),
            decide=decide,
            commands={"starter-commands": ("hosts.>",)},
            loops=loops or [],
        )


async def logged(bus: MemoryBus) -> list[Envelope[Message]]:
    return [e.envelope async for e in bus.replay() if e.envelope is not None]


async def test_an_answer_whose_append_failed_lands_whole_once_on_redelivery() -> None:
    """The append fails; the redelivered command appends the whole answer, once."""
    bus, svc = FaultyBus(), Starter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        bus.failing_appends = 1
        cmd = Envelope.wrap(CreateVm(vm="web", cpu=1, mem_mib=64), producer="test")
        await bus.send(cmd)
        await eventually(lambda: len(svc.vms) == 3, what="the whole answer")
        await bus.send(cmd)
        await bus.send(Envelope.wrap(CreateVm(vm="db", cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: len(svc.vms) == 6, what="the next command")
    names = [e.data.vm for e in await logged(bus) if isinstance(e.data, VmCreated)]
    assert names == ["web-a", "web-b", "web-c", "db-a", "db-b", "db-c"]


async def test_no_command_is_sent_before_its_cause_is_in_the_log() -> None:
    """Each command goes out only once every event of its outcome is in the log, with the
    outbox record of it."""
    bus, svc = FaultyBus(), Starter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        for vm in ("a", "b"):
            await bus.send(Envelope.wrap(CreateVm(vm=vm, cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: len(bus.sent) == 2, what="both power-ons")
    log = [e async for e in bus.replay()]
    for command, log_end in bus.sent:
        cause = [e for e in log if e.envelope and e.envelope.causation_id == command.causation_id]
        assert len(cause) == 4  # three VmCreated and the CommandsIssued record
        assert max(e.seq for e in cause) <= log_end


async def test_commands_appended_but_not_sent_before_a_stop_are_sent_after_restart() -> None:
    """The sends fail until the service stops; the next instance sends them, from the
    outbox record in the log, with the ids they were given."""
    bus, svc = FaultyBus(), Starter()
    bus.failing_sends = 10_000
    async with running(Runtime(svc.definition(), bus, "i1")):
        await bus.send(Envelope.wrap(CreateVm(vm="web", cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: len(svc.vms) == 3, what="the events")
    assert bus.sent == []
    bus.failing_sends = 0
    async with running(Runtime(Starter().definition(), bus, "i2")):
        await eventually(lambda: len(bus.sent) == 1, what="the resent command")
    [record] = [e.data for e in await logged(bus) if isinstance(e.data, CommandsIssued)]
    [(sent, _)] = bus.sent
    assert isinstance(sent.data, PowerOnVm)
    assert sent.encode().decode() == record.commands[0]


async def test_a_loop_that_fails_is_restarted_and_counted() -> None:
    """A step that raises is tried again; the failure is counted; the loop goes on."""
    bus, svc = FaultyBus(), Starter()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BusUnavailable("a reconnect")

    runtime = Runtime(svc.definition([Loop("ticker", step, every=0.01)]), bus, "i1")
    async with running(runtime):
        await eventually(lambda: calls >= 5, what="the loop to go on after its failure")
    stats = runtime.loop_stats["ticker"]
    assert stats.failures == 1
    assert stats.consecutive == 0


async def test_a_loop_that_keeps_failing_stops_the_service_with_an_error() -> None:
    """Five failures in a row: the service announces why and its run ends in an error."""
    bus, svc = FaultyBus(), Starter()

    async def step() -> None:
        raise RuntimeError("broken")

    runtime = Runtime(svc.definition([Loop("broken", step, every=0.01)]), bus, "i1")
    with pytest.raises(ServiceFailed, match="loop broken failed 5 times"):
        await asyncio.wait_for(runtime.run(asyncio.Event()), 30)
    stopped = [e.data for e in await logged(bus) if e.type == "ServiceStopped"]
    assert [getattr(s, "reason", "") for s in stopped] == [
        "failed: loop broken failed 5 times: RuntimeError('broken')"
    ]


async def test_every_command_of_the_last_append_is_sent_after_a_restart() -> None:
    """Two outcomes carried out together share one append: both their commands are sent
    by the next instance when the first could send neither."""
    bus, svc = FaultyBus(), Starter()
    bus.failing_sends = 10_000
    steps = 0

    async def step() -> list[Outcome]:
        nonlocal steps
        steps += 1
        return [
            Outcome(commands=[PowerOnVm(vm=vm, host="h1")], key=f"on:{vm}") for vm in ("a", "b")
        ]

    async with running(Runtime(svc.definition([Loop("asks", step, every=0.01)]), bus, "i1")):
        await eventually(lambda: steps >= 3, what="a few steps")
    records = [e.data for e in await logged(bus) if isinstance(e.data, CommandsIssued)]
    assert len(records) == 2  # decided again each step, appended once
    assert records[0].batch == records[1].batch
    bus.failing_sends = 0
    async with running(Runtime(Starter().definition(), bus, "i2")):
        await eventually(lambda: len(bus.sent) == 2, what="both resent commands")
    assert sorted(getattr(env.data, "vm", "") for env, _ in bus.sent) == ["a", "b"]


async def test_a_loop_that_fails_while_the_broker_is_away_waits_for_it() -> None:
    """Failures that are the broker's absence never stop the service: the loop waits."""
    bus, svc = FaultyBus(), Starter()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 6:
            raise BusUnavailable("the broker restarts")

    runtime = Runtime(svc.definition([Loop("ticker", step, every=0.01)]), bus, "i1")
    async with running(runtime):
        await eventually(lambda: calls > 7, timeout=30, what="the loop to outlast the outage")
        assert runtime.healthy
    stats = runtime.loop_stats["ticker"]
    assert (stats.failures, stats.consecutive) == (6, 0)


async def test_a_command_whose_append_meets_an_absent_broker_is_answered_once_it_is_back() -> None:
    """More failed appends in a row than a command has deliveries: it is not dead-lettered
    (the broker was away, not the command at fault) and is answered, once."""
    bus, svc = FaultyBus(), Starter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        bus.failing_appends = 8
        cmd = Envelope.wrap(CreateVm(vm="web", cpu=1, mem_mib=64), producer="test")
        await bus.send(cmd)
        await eventually(lambda: len(svc.vms) == 3, timeout=60, what="the answer")
    assert await bus.dead_letters("starter-commands") == []


def reservation(name: str) -> CapacityReserved:
    return CapacityReserved(
        host="h1", reservation=name, workload=name, owner=Owner.LOW, cpu_mhz=100, mem_mib=64
    )


async def test_a_guard_holds_for_the_aggregate_an_earlier_outcome_of_the_append_writes() -> None:
    """A release (no expectation) and a reservation that expects the pool's version as the
    log holds it, carried out together in that order (a round's housekeeping, then its
    placements): the append lands; and it is refused if the pool moved meanwhile."""
    bus = MemoryBus()
    await bus.start()
    await bus.append(Envelope.wrap(reservation("old"), producer="test"))
    version = await bus.version("pool/h1")
    runtime = Runtime(ServiceDefinition(name="pooler"), bus, "i1")

    def outcomes(vm: str) -> list[Outcome]:
        return [
            Outcome(events=[CapacityReleased(host="h1", reservation="old")], key=f"free:{vm}"),
            Outcome(events=[reservation(vm)], key=f"place:{vm}", expect={"pool/h1": version}),
        ]

    await runtime.carry_out(outcomes("new"))
    assert [e.type for e in await logged(bus)] == [
        "CapacityReserved",
        "CapacityReleased",
        "CapacityReserved",
    ]
    with pytest.raises(ConcurrencyError):
        await runtime.carry_out(outcomes("newer"))


class SlowSends(FaultyBus):
    """Sends wait until the test lets them go."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def send(self, env: Envelope[Any]) -> None:
        if env.producer != "test":
            self.waiting += 1
            await self.release.wait()
        await super().send(env)


async def test_commands_go_out_after_the_lock_is_given_back_and_before_the_answer_counts() -> None:
    """While a decision's commands are on their way (a slow broker), the service's other
    decisions (a loop's step) go ahead; the command that caused them counts as handled
    only once they are out."""
    bus, svc = SlowSends(), Starter()
    stepped: list[bool] = []

    async def step() -> Outcome | None:
        if bus.waiting and not stepped:
            stepped.append(True)
            return Outcome(events=[created("step")], key="step")
        return None

    runtime = Runtime(svc.definition([Loop("steps", step, every=0.01)]), bus, "i1")
    async with running(runtime):
        await bus.send(Envelope.wrap(CreateVm(vm="a", cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: bus.waiting == 1, what="the power-on on its way")
        await eventually(lambda: "step" in svc.vms, what="the loop's decision meanwhile")
        assert runtime.handled == 0
        bus.release.set()
        await eventually(lambda: runtime.handled == 1, what="the command handled")
    assert [c.data.vm for c, _ in bus.sent] == ["a-a"]
    assert svc.vms == ["a-a", "a-b", "a-c", "step"]
