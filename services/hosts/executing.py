"""Recorded guests on this process's hosts: each step, their inputs drawn from outside,
their execution, and what they sent.

A VM created with ``inputs`` runs this way instead of the plain seeded workload: the
host's emulated NIC, timers and devices (``InputDriver``) give it inputs from the OS's
entropy pool, and ``execute_step`` runs it on them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from schemas.memory import (
    MAX_RUN_INPUT_BYTES,
    MAX_RUN_INPUTS,
    LoggedInput,
    LoggedRun,
    SentPacket,
)
from services.hosts.guest_inputs import driver_of
from services.hosts.memory import HostMemory
from services.hosts.memory import Workload as MemWorkload
from services.hosts.memory.execution import (
    DEVICE_PAGES,
    DeviceRegion,
    Executed,
    GuestInput,
    InputKind,
    execute_step,
    guest_accesses,
)
from services.hosts.memory.workload import Accesses
from services.hosts.state import Vm

_KIND_NAMES = {InputKind.PACKET: "packet", InputKind.TIMER: "timer", InputKind.DEVICE: "device"}
_KINDS = {name: kind for kind, name in _KIND_NAMES.items()}


@dataclass(frozen=True, slots=True)
class RunPlan:
    """A recorded guest's run worked out before it is run: the inputs it takes (and those
    its NIC drops over the run's budget), what it sends, and each step's accesses."""

    inputs: list[LoggedInput]
    outputs: list[SentPacket]
    dropped: int
    accesses: list[Accesses]


def logged(inputs: list[GuestInput]) -> list[LoggedInput]:
    return [LoggedInput(step=i.step, kind=_KIND_NAMES[i.kind], data=i.data) for i in inputs]  # type: ignore[arg-type]


def by_step(inputs: list[LoggedInput]) -> dict[int, list[GuestInput]]:
    """A log entry's inputs, step by step, in the order they arrived."""
    steps: dict[int, list[GuestInput]] = defaultdict(list)
    for given in inputs:
        steps[given.step].append(GuestInput(given.step, _KINDS[given.kind], given.data))
    return steps


class RecordedGuests:
    def __init__(self) -> None:
        # Inputs taken and packets sent, per VM, since this process started.
        self.inputs: Counter[str] = Counter()
        self.outputs: Counter[str] = Counter()

    def run(
        self,
        mem: HostMemory,
        vm: Vm,
        step: int,
        workload: MemWorkload,
        write: Callable[[Accesses], None],
        *,
        seconds: float,
        writes: int,
        reads: int,
        inputs: list[GuestInput] | None = None,
    ) -> Executed:
        """Step ``step`` of ``vm``, which stands for ``seconds`` emulated seconds: on
        ``inputs`` when given (a replay, a run its migration asks for), else on what its
        driver draws now."""
        assert vm.inputs is not None
        if inputs is None:
            inputs = driver_of(vm.inputs, seconds).draw(step)
        done = execute_step(
            _reader(mem, vm.name),
            write,
            pages=mem.spec(vm.name).pages,
            seed=vm.seed,
            step=step,
            inputs=inputs,
            workload=workload,
            writes=writes,
            reads=reads,
        )
        self.inputs[vm.name] += len(inputs)
        self.outputs[vm.name] += len(done.outputs)
        return done

    def plan(
        self,
        mem: HostMemory,
        vm: Vm,
        first: int,
        steps: int,
        workload: MemWorkload,
        *,
        seconds: float,
        writes: int,
        reads: int,
        record: bool,
        given: LoggedRun | None,
    ) -> RunPlan:
        """Steps ``first`` on of ``vm``, each of ``seconds`` emulated seconds: on the
        inputs of ``given`` (a logged run replayed), on what its driver draws now
        (``record``), or on none (a migration's run). Nothing is written: the plan is
        worked out on a copy of the guest's device region, which only inputs change."""
        assert vm.inputs is not None
        region = DeviceRegion(_reader(mem, vm.name)(range(DEVICE_PAGES)))
        logged_steps = by_step(given.inputs) if given is not None else {}
        driver = driver_of(vm.inputs, seconds)
        taken: list[GuestInput] = []
        sent = []
        accesses = []
        budget, dropped = MAX_RUN_INPUT_BYTES, 0
        pages = mem.spec(vm.name).pages
        for step in range(first, first + steps):
            inputs = logged_steps.get(step, [])
            if record and given is None:
                inputs = []
                for drawn in driver.draw(step):
                    if len(drawn.data) > budget or len(taken) + len(inputs) >= MAX_RUN_INPUTS:
                        dropped += 1
                        continue
                    budget -= len(drawn.data)
                    inputs.append(drawn)
            taken += inputs
            sent += region.take(vm.seed, step, inputs)
            entropy = region.entropy(vm.seed)
            accesses.append(
                guest_accesses(workload, pages, step, entropy, writes=writes, reads=reads)
            )
        outputs = [SentPacket(seq=o.seq, step=o.step, data=o.data) for o in sent]
        return RunPlan(logged(taken), outputs, dropped, accesses)


def _reader(mem: HostMemory, vm: str) -> Callable[[Sequence[int]], list[bytes]]:
    return lambda pages: [row.tobytes() for row in mem.copy_pages(vm, list(pages))]
