"""The service runtime on the in-memory bus: rebuild, exactly-once commands, lifecycle."""

from __future__ import annotations

from dataclasses import replace

import pytest

from schemas import Envelope, Message, Reply
from schemas.host import HostTelemetry
from schemas.queries import ListVms, VmList
from schemas.service import ServiceStarted, ServiceStopped
from schemas.vm import CreateVm, VmCreated
from shared.bus import Stream
from shared.bus.memory import MemoryBus
from shared.effects import derive
from shared.outcome import Outcome, answer
from shared.runtime import Runtime, ServiceDefinition
from shared.testing import eventually, running


class Counter:
    """A tiny service: answers CreateVm with VmCreated and remembers the VMs it saw."""

    def __init__(self, fail_after_append: int = 0) -> None:
        self.vms: list[str] = []
        self.decided = 0
        self.fail_after_append = fail_after_append

    def definition(self) -> ServiceDefinition:
        def fold(_seq: int, env: Envelope[Message]) -> None:
            if isinstance(env.data, VmCreated):
                self.vms.append(env.data.vm)

        async def decide(env: Envelope[Message]) -> Outcome:
            self.decided += 1
            assert isinstance(env.data, CreateVm)
            created = VmCreated(
                vm=env.data.vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=True
            )
            return answer(env, created)

        async def listed(env: Envelope[Message]) -> Reply:
            return VmList(vms=[])

        return ServiceDefinition(
            name="counter",
            fold=fold,
            fold_filters=("vm.>",),
            decide=decide,
            commands={"counter-commands": ("hosts.>",)},
            queries={"hosts": listed},
        )


def create(vm: str) -> Envelope[CreateVm]:
    return Envelope.wrap(CreateVm(vm=vm, cpu=1, mem_mib=64), producer="test")


async def types_in_log(bus: MemoryBus) -> list[str]:
    return [e.envelope.type async for e in bus.replay() if e.envelope is not None]


async def test_rebuilds_state_from_the_log_before_serving() -> None:
    """Events already in the log are folded into the service's state when it starts."""
    bus = MemoryBus()
    for vm in ["a", "b"]:
        await bus.append(
            Envelope.wrap(
                VmCreated(vm=vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=True),
                producer="elsewhere",
            )
        )
    svc = Counter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        assert svc.vms == ["a", "b"]


async def test_command_answer_is_appended_and_folded() -> None:
    """A command's events are appended with ids derived from it and folded into state."""
    bus = MemoryBus()
    svc = Counter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        cmd = create("a")
        await bus.send(cmd)
        await eventually(lambda: svc.vms == ["a"], what="the VM to be folded")
    events = [
        e.envelope async for e in bus.replay() if e.envelope and e.envelope.type == "VmCreated"
    ]
    expected_id = derive("counter", Outcome(cause=cmd), "e0")
    assert [(e.causation_id, e.id) for e in events] == [(cmd.id, expected_id)]


async def test_redelivered_command_is_answered_once() -> None:
    """A command delivered again after its answer reached the log changes nothing."""
    bus = MemoryBus()
    svc = Counter()
    cmd = create("a")
    async with running(Runtime(svc.definition(), bus, "i1")):
        await bus.send(cmd)
        await eventually(lambda: svc.vms == ["a"], what="first answer")
    # A restarted instance rebuilds, then receives the same command again.
    svc2 = Counter()
    async with running(Runtime(svc2.definition(), bus, "i2")):
        await bus.send(cmd)
        await bus.send(create("b"))
        await eventually(lambda: svc2.vms == ["a", "b"], what="the second command")
    assert svc2.decided == 1
    assert (await types_in_log(bus)).count("VmCreated") == 2


async def test_lifecycle_events_frame_the_run() -> None:
    """A service announces itself when ready and when stopped, with what it handled."""
    bus = MemoryBus()
    svc = Counter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        await bus.send(create("a"))
        await eventually(lambda: svc.vms == ["a"], what="the command")
    envs = [e.envelope async for e in bus.replay() if e.envelope is not None]
    started = [e.data for e in envs if isinstance(e.data, ServiceStarted)]
    stopped = [e.data for e in envs if isinstance(e.data, ServiceStopped)]
    assert [(s.service, s.instance) for s in started] == [("counter", "i1")]
    assert [(s.service, s.handled) for s in stopped] == [("counter", 1)]


async def test_serves_queries_while_running() -> None:
    """A query addressed to the service's target is answered."""
    bus = MemoryBus()
    async with running(Runtime(Counter().definition(), bus, "i1")):
        reply = await bus.request(Envelope.wrap(ListVms(), producer="test"))
        assert isinstance(reply.data, VmList)


async def test_undecodable_command_is_dead_lettered_and_service_carries_on() -> None:
    """Garbage on the service's command subject goes to dead letters; later commands work."""
    bus = MemoryBus()
    svc = Counter()
    async with running(Runtime(svc.definition(), bus, "i1")):
        await bus.publish_raw(Stream.COMMANDS, "hosts.CreateVm", b"garbage")
        await bus.send(create("a"))
        await eventually(lambda: svc.vms == ["a"], what="the good command")
    [dead] = await bus.dead_letters("counter-commands")
    assert dead.data == b"garbage"
    assert dead.reason.startswith("undecodable")


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_settings_reject_bad_host_counts(value: str) -> None:
    """A bad VPLANE_HOSTS is a SettingsError naming the variable."""
    from shared.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="VPLANE_HOSTS"):
        Settings.from_env({"VPLANE_HOSTS": value})


async def test_an_observed_telemetry_sample_is_noted_without_a_decision() -> None:
    """A service that only notes telemetry (heartbeats) sees every sample, appends
    nothing for it and keeps no record of it among the inputs it answered; the emulated
    time of a sample it did not take (say, from an unknown host) moves no clock."""
    bus = MemoryBus()
    seen: list[int] = []

    def note(env: Envelope[Message]) -> bool:
        assert isinstance(env.data, HostTelemetry)
        seen.append(env.data.tick)
        return env.data.tick != 2

    definition = replace(Counter().definition(), observe_telemetry=note)
    runtime = Runtime(definition, bus, "i1")
    async with running(runtime):
        before = len(runtime.answered)
        for tick in range(3):
            await bus.emit(Envelope.wrap(sample(tick), producer="hosts", sim_time=10.0 * tick))
        await eventually(lambda: seen == [0, 1, 2], what="three samples noted")
        assert len(runtime.answered) == before
        assert definition.clock.now() == 10.0
    assert "HostTelemetry" not in await types_in_log(bus)


def sample(tick: int) -> HostTelemetry:
    return HostTelemetry(
        host="h1",
        tick=tick,
        cpu_capacity_mhz=1,
        cpu_demand_mhz=0,
        cpu_used_mhz=0,
        mem_capacity_mib=1,
        mem_reserved_mib=0,
        vms_running=0,
        vms_total=0,
    )


async def test_a_follower_misses_nothing_appended_while_the_service_set_itself_up() -> None:
    """Another process appends after this one's rebuild read the log and before its own
    setup appends land (two hosts processes starting together): the follower still folds
    it, and folds the service's own setup events once."""
    bus = MemoryBus("t")
    seen: list[str] = []

    def fold(_seq: int, env: Envelope[Message]) -> None:
        if isinstance(env.data, VmCreated):
            seen.append(env.data.vm)

    async def setup() -> Outcome:
        other = VmCreated(
            vm="theirs", host="h2", cpu=1, mem_mib=64, priority="low", powered_on=True
        )
        await bus.append(Envelope.wrap(other, producer="other-process"))
        mine = VmCreated(vm="mine", host="h1", cpu=1, mem_mib=64, priority="low", powered_on=True)
        return Outcome(events=[mine], key="setup")

    definition = ServiceDefinition(
        name="follower", fold=fold, fold_filters=("vm.>",), follow=True, setup=setup
    )
    async with running(Runtime(definition, bus, "i1")):
        await eventually(lambda: "theirs" in seen, timeout=2, what="the other process's event")
    assert sorted(seen) == ["mine", "theirs"]


async def test_a_follower_forgets_its_own_appends_once_it_has_passed_them() -> None:
    """Own appends are folded as they land and skipped when the follower brings them;
    once it has, nothing of them is kept (a follower far behind a busy service used to
    rescan thousands of remembered sequences on every entry), and each was folded once."""
    bus = MemoryBus("t")
    seen: list[str] = []

    def fold(_seq: int, env: Envelope[Message]) -> None:
        if isinstance(env.data, VmCreated):
            seen.append(env.data.vm)

    definition = ServiceDefinition(name="busy", fold=fold, fold_filters=("vm.>",), follow=True)
    runtime = Runtime(definition, bus, "i1")
    names = [f"vm{i}" for i in range(300)]
    async with running(runtime):
        for name in names:
            async with runtime.exclusive():
                await runtime.carry_out(Outcome(events=[made(name)], key=name))
        last = await bus.last_seq()
        await eventually(lambda: runtime._followed >= last, timeout=5, what="the follower")
        assert runtime._observed == set()
    assert seen == names


def made(vm: str) -> VmCreated:
    return VmCreated(vm=vm, host="h1", cpu=1, mem_mib=64, priority="low", powered_on=True)


@pytest.mark.parametrize("stale_twice", [False, True])
async def test_a_decision_taken_behind_the_log_is_taken_again_once_it_is_folded(
    stale_twice: bool,
) -> None:
    """A command may arrive before the follower has folded its cause (a reservation
    appended just before it was sent). A decision that says so (``stale``) is taken
    again once the runtime has folded what the log holds of those filters, and only
    once: a decision still stale then is carried out as it stands."""
    bus = MemoryBus("t")
    seen: list[str] = []
    decided: list[tuple[str, ...]] = []

    def fold(_seq: int, env: Envelope[Message]) -> None:
        if isinstance(env.data, VmCreated):
            seen.append(env.data.vm)

    def decide() -> Outcome:
        decided.append(tuple(seen))
        behind = "cause" not in seen or stale_twice
        return Outcome(events=[made(f"after-{len(decided)}")], key="k", stale=("vm.>",) * behind)

    definition = ServiceDefinition(name="behind", fold=fold, fold_filters=("vm.>",), follow=True)
    runtime = Runtime(definition, bus, "i1")
    # Under the lock, the follower cannot fold the cause before the decision is taken.
    async with running(runtime), runtime.exclusive():
        await bus.append(Envelope.wrap(made("cause"), producer="scheduler"))
        await runtime.settle(decide)
    assert decided == [(), ("cause",)]
    assert "after-1" not in seen
    assert seen[:2] == ["cause", "after-2"]
    assert [e for e in await types_in_log(bus) if e == "VmCreated"] == ["VmCreated"] * 2
