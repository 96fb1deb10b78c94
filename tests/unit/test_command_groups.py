"""Group commit: commands delivered together are decided in order, on the state the
answers before them leave, and answered in one append; on a bus that fails on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from schemas import Envelope, Message
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, VmCreated
from shared.bus import AppendResult, BusUnavailable
from shared.bus.memory import MemoryBus
from shared.command_groups import CommandGroups
from shared.outcome import Outcome, answer
from shared.runtime import Runtime, ServiceDefinition
from shared.testing import eventually, poll, running


class CountingBus(MemoryBus):
    """Counts a service's appends; the next ``lost_acks`` appends of answers land and
    then report a failure."""

    def __init__(self) -> None:
        super().__init__()
        self.appends = 0
        self.lost_acks = 0

    async def append_batch(
        self, envs: list[Envelope[Any]], *, expected: Mapping[int, int] | None = None
    ) -> list[AppendResult]:
        results = await super().append_batch(envs, expected=expected)
        if any(e.producer == "creator" for e in envs):
            self.appends += 1
        answers = any(isinstance(e.data, VmCreated) for e in envs)
        if self.lost_acks and answers and not results[0].duplicate:
            self.lost_acks -= 1
            raise BusUnavailable("the acknowledgement of the append was lost")
        return results


class Creator:
    """Creates each VM once; a second request for a name is refused. ``poison`` breaks
    any decision that meets it; ``first_only`` answers one command of a group a time."""

    def __init__(self, *, first_only: bool = False) -> None:
        self.vms: list[str] = []
        self.groups: list[int] = []
        self.first_only = first_only

    def definition(self) -> ServiceDefinition:
        def fold(_seq: int, env: Envelope[Message]) -> None:
            if isinstance(env.data, VmCreated):
                self.vms.append(env.data.vm)

        def one(known: set[str], env: Envelope[Message]) -> Outcome:
            assert isinstance(env.data, CreateVm)
            vm = env.data.vm
            if vm == "poison":
                raise RuntimeError("a decision that always fails")
            if vm in known:
                return answer(env, CommandRejected.of(env, RejectionCode.ALREADY_EXISTS, vm))
            return answer(
                env,
                VmCreated(vm=vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=False),
            )

        async def decide(env: Envelope[Message]) -> Outcome:
            return one(set(self.vms), env)

        async def decide_group(envs: Sequence[Envelope[Message]]) -> list[Outcome]:
            self.groups.append(len(envs))
            known, out = set(self.vms), []
            for env in envs[:1] if self.first_only else envs:
                outcome = one(known, env)
                known |= {e.vm for e in outcome.events if isinstance(e, VmCreated)}
                out.append(outcome)
            return out

        return ServiceDefinition(
            name="creator",
            fold=fold,
            fold_filters=("vm.>",),
            decide=decide,
            decide_group=decide_group,
            commands={"creator-commands": ("hosts.>",)},
        )


def create(vm: str) -> Envelope[CreateVm]:
    return Envelope.wrap(CreateVm(vm=vm, cpu=1, mem_mib=64), producer="test")


async def answers(bus: MemoryBus) -> dict[Any, list[str]]:
    """Each command's answers in the log, by command id."""
    out: dict[Any, list[str]] = {}
    async for entry in bus.replay():
        env = entry.envelope
        if env is not None and env.producer == "creator" and env.causation_id is not None:
            out.setdefault(env.causation_id, []).append(env.type)
    return out


async def test_commands_sent_together_are_answered_in_a_few_appends() -> None:
    """Forty commands queued at once: every one answered once, in far fewer appends."""
    bus, svc = CountingBus(), Creator()
    commands = [create(f"vm{i}") for i in range(40)]
    await bus.send_many(commands)
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: len(svc.vms) == 40, what="forty VMs")
    logged = await answers(bus)
    assert {c.id: ["VmCreated"] for c in commands} == logged
    assert svc.vms == [f"vm{i}" for i in range(40)]
    assert max(svc.groups) > 1
    assert bus.appends <= 40 // 2


async def test_each_command_of_a_group_is_decided_on_the_answers_before_it() -> None:
    """The same VM asked for twice in one group: the second request is refused, as it
    would be one after the other."""
    bus, svc = CountingBus(), Creator()
    first, again, other = create("web"), create("web"), create("db")
    await bus.send_many([first, again, other])
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: len(svc.vms) == 2, what="two VMs")
        await eventually(lambda: bus.appends >= 1, what="the answers")
    logged = await answers(bus)
    assert logged == {
        first.id: ["VmCreated"],
        again.id: ["CommandRejected"],
        other.id: ["VmCreated"],
    }
    assert svc.groups[0] == 3


async def test_a_command_that_breaks_its_group_fails_alone() -> None:
    """A decision that raises does not hold up the commands delivered with it: they are
    decided one by one and answered; the bad one is dead-lettered."""
    bus, svc = CountingBus(), Creator()
    commands = [create("a"), create("poison"), create("b"), create("c")]
    await bus.send_many(commands)
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: len(svc.vms) == 3, what="the three good VMs")
        dead = await poll(
            lambda: bus.dead_letters("creator-commands"), bool, what="the dead letter"
        )
    assert [d.reason for d in dead] == [
        "handler-failed: RuntimeError: a decision that always fails"
    ]
    logged = await answers(bus)
    assert set(logged) == {commands[0].id, commands[2].id, commands[3].id}


async def test_a_service_may_answer_the_first_of_a_group_and_the_rest_later() -> None:
    """A service that answers one command of each group: the others come again, in
    order, until all are answered."""
    bus, svc = CountingBus(), Creator(first_only=True)
    commands = [create(f"vm{i}") for i in range(6)]
    await bus.send_many(commands)
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: len(svc.vms) == 6, what="six VMs")
    assert svc.vms == [f"vm{i}" for i in range(6)]
    assert {c.id: ["VmCreated"] for c in commands} == await answers(bus)


async def test_a_group_whose_acknowledgement_was_lost_is_answered_once() -> None:
    """A group's append lands but its acknowledgement is lost; the same commands come
    again and are answered once."""
    bus, svc = CountingBus(), Creator()
    bus.lost_acks = 1
    commands = [create(f"vm{i}") for i in range(5)]
    await bus.send_many(commands)
    async with running(Runtime(svc.definition(), bus, "i1")):
        await eventually(lambda: len(svc.vms) == 5, what="five VMs")
        await eventually(lambda: len(svc.groups) >= 2, what="the group decided again")
    assert bus.lost_acks == 0
    assert await answers(bus) == {c.id: ["VmCreated"] for c in commands}


async def test_a_group_of_answered_and_new_commands_answers_the_new_ones_once() -> None:
    """A command whose answer landed unacknowledged comes again in a group with new
    commands: the group's append is refused as a duplicate, the log shows which of them
    it answered, and the rest are decided again and answered, each once."""
    bus, svc = CountingBus(), Creator()
    runtime = Runtime(svc.definition(), bus, "i1")
    decide_group = runtime.definition.decide_group
    assert decide_group is not None
    groups = CommandGroups(runtime, decide_group)
    a, b, c = create("a"), create("b"), create("c")
    async with running(runtime):
        bus.lost_acks = 1
        with pytest.raises(BusUnavailable):
            await groups.answer(a)
        await asyncio.gather(groups.answer(a), groups.answer(b), groups.answer(c))
    assert svc.groups == [1, 3, 2]
    assert await answers(bus) == {a.id: ["VmCreated"], b.id: ["VmCreated"], c.id: ["VmCreated"]}
