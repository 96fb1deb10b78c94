"""Commands for a host nobody runs: refused, taken off the queue, never left waiting."""

from __future__ import annotations

from schemas import Envelope
from schemas.host import CrashHost, HostRegistered
from schemas.service import CommandRejected
from schemas.vm import PowerOffVm
from services.hosts.bootstrap import build
from shared.bus import Stream
from shared.bus.memory import MemoryBus
from shared.bus.protocol import UNCLAIMED
from shared.client import Client
from shared.runtime import Runtime
from shared.settings import Settings
from shared.testing import poll, running, unique_namespace


async def test_a_command_for_a_host_never_registered_is_refused_and_dropped() -> None:
    """Sent on the bus past the client's check, it is refused unknown-host within a
    second; undecodable bytes there are dead-lettered; a command for a registered host
    (its process away) waits for it."""
    bus = MemoryBus(unique_namespace())
    client = Client(bus, producer="test")
    async with running(Runtime(build(Settings.from_env({}, hosts=1)), bus, "i1")):
        await bus.append(
            Envelope.wrap(
                HostRegistered(host="away1", cpu_cores=4, cpu_mhz=2000, mem_mib=4096),
                producer="hosts",
            )
        )
        waits = Envelope.wrap(PowerOffVm(vm="v", host="away1"), producer="test")
        await bus.send(waits)
        await bus.publish_raw(Stream.COMMANDS, "host.ghost.PowerOffVm", b"[1, 2")
        stray = Envelope.wrap(PowerOffVm(vm="v", host="nohost"), producer="test")
        [refused] = await client.wait_for(
            lambda e: e.causation_id == stray.id, timeout=1.5, before=lambda: bus.send(stray)
        )
        assert isinstance(refused.data, CommandRejected)
        assert refused.data.code == "unknown-host"
        assert refused.data.reason == "no host nohost"
        [dead] = await poll(
            lambda: bus.dead_letters(UNCLAIMED),
            lambda found: len(found) > 0,
            timeout=2,
            what="the stray bytes dead-lettered",
        )
        assert dead.subject.endswith("cmd.host.ghost.PowerOffVm")
        assert bus.queued() == [f"{bus.namespace}.cmd.host.away1.PowerOffVm"]


async def test_a_host_registered_just_before_its_command_is_caught_up_with() -> None:
    """Another process registers a host and a command for it follows at once; this
    process's follower has not folded the registration yet. The refusal (unknown-host)
    is not what it answers: the runtime folds the log's latest and decides again."""
    bus = MemoryBus(unique_namespace())
    definition = build(Settings.from_env({}, hosts=1))
    assert definition.decide is not None
    decide = definition.decide
    runtime = Runtime(definition, bus, "i1")
    async with running(runtime), runtime.exclusive():
        # Under the lock, the follower cannot fold the registration before the decision.
        await bus.append(
            Envelope.wrap(
                HostRegistered(host="b1", cpu_cores=4, cpu_mhz=2000, mem_mib=4096),
                producer="hosts",
            )
        )
        crash = Envelope.wrap(CrashHost(host="b1"), producer="test")
        await runtime.settle(lambda: decide(crash), answers=crash.id)
    [answer] = [
        e.envelope async for e in bus.replay() if e.envelope and e.envelope.causation_id == crash.id
    ]
    assert answer.type == "HostCrashed", answer.data
    assert runtime.caught_up == 1
