"""An append that lands but whose acknowledgement is lost: the runtime cannot tell it
landed, so it must send the outcome's commands once the log shows them, as the log
has them; whether it learns that by deciding again (a duplicate append) or from its
follower (which folds the append before the command is redelivered)."""

from __future__ import annotations

import pytest

from schemas import Envelope, Message
from schemas.service import CommandsIssued
from schemas.vm import CreateVm, PowerOnVm, VmCreated
from shared.bus.memory import MemoryBus
from shared.effects import issued
from shared.outcome import Outcome, answer
from shared.runtime import Runtime, ServiceDefinition
from shared.testing import eventually, running
from shared.testing_faults import Faults, FaultyBus, of_type


def starter(follow: bool) -> ServiceDefinition:
    """Answers CreateVm with VmCreated and asks for the VM to be powered on."""

    def fold(_seq: int, _env: Envelope[Message]) -> None:
        return None

    async def decide(env: Envelope[Message]) -> Outcome:
        assert isinstance(env.data, CreateVm)
        created = VmCreated(
            vm=env.data.vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=False
        )
        return answer(env, created, commands=[PowerOnVm(vm=env.data.vm, host="h1")])

    return ServiceDefinition(
        name="starter",
        fold=fold,
        fold_filters=("vm.>",),
        follow=follow,
        decide=decide,
        commands={"starter-commands": ("hosts.>",)},
    )


@pytest.mark.parametrize("follow", [False, True], ids=["deciding-again", "following"])
async def test_commands_of_an_append_whose_ack_was_lost_are_sent_once(follow: bool) -> None:
    memory, faults = MemoryBus(), Faults()
    bus = FaultyBus(memory, faults)
    lost = faults.fail_append(of_type("VmCreated"), landed=True)
    async with running(Runtime(starter(follow), bus, "i1")):
        await memory.send(Envelope.wrap(CreateVm(vm="web", cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: len(bus.record.sent) == 1, what="the power-on sent")
        assert lost.hits == 1
        # One more command, to be sure the first went out once and nothing follows it.
        await memory.send(Envelope.wrap(CreateVm(vm="db", cpu=1, mem_mib=64), producer="test"))
        await eventually(lambda: len(bus.record.sent) == 2, what="the next power-on")
    records = [
        e.envelope.data
        async for e in memory.replay()
        if e.envelope is not None and isinstance(e.envelope.data, CommandsIssued)
    ]
    logged = [cmd for record in records for cmd in issued(record)]
    assert [s.env for s in bus.record.sent] == logged
    assert all(s.recorded_before for s in bus.record.sent)
