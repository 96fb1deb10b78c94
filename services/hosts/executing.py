"""Recorded guests on this process's hosts: each step, their inputs drawn from outside,
their execution, and what they sent.

A VM created with ``inputs`` runs this way instead of the plain seeded workload: the
host's emulated NIC, timers and devices (``InputDriver``) give it inputs from the OS's
entropy pool, and ``execute_step`` runs it on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from services.hosts.guest_inputs import driver_of
from services.hosts.memory import HostMemory
from services.hosts.memory import Workload as MemWorkload
from services.hosts.memory.execution import (
    Executed,
    GuestInput,
    execute_step,
    guest_accesses,
    state_of,
)
from services.hosts.memory.workload import Accesses
from services.hosts.state import Vm


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

    @staticmethod
    def planned(
        mem: HostMemory, vm: Vm, step: int, workload: MemWorkload, *, writes: int, reads: int
    ) -> Accesses:
        """What step ``step`` of ``vm`` would access given no inputs, without running it:
        its state digest stays as it is."""
        entropy = state_of(_reader(mem, vm.name), vm.seed).entropy
        return guest_accesses(
            workload, mem.spec(vm.name).pages, step, entropy, writes=writes, reads=reads
        )


def _reader(mem: HostMemory, vm: str) -> Callable[[int], bytes]:
    return lambda page: mem.copy_pages(vm, [page])[0].tobytes()
