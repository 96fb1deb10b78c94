"""Recorded guests: a step is a function of memory, seed and the inputs given, and nothing
else; a backup reaches its primary's memory only with the primary's whole input log."""

from __future__ import annotations

import pytest

from services.hosts.guest_inputs import InputDriver
from services.hosts.memory import HostMemory, VmSpec
from services.hosts.memory.execution import (
    DEVICE_PAGES,
    DeviceRegion,
    Executed,
    GuestInput,
    InputKind,
    execute_step,
    state_of,
)
from services.hosts.memory.workload import Workload

SEED = 11
STEPS = 40


def step(host: HostMemory, vm: str, n: int, inputs: list[GuestInput]) -> Executed:
    return execute_step(
        lambda pages: [row.tobytes() for row in host.copy_pages(vm, list(pages))],
        lambda accesses: host.apply(vm, accesses),
        pages=host.spec(vm).pages,
        seed=SEED,
        step=n,
        inputs=inputs,
        workload=Workload(seed=SEED),
        writes=50,
        reads=20,
    )


def pair() -> HostMemory:
    """A primary and its backup, made equal the way FT starts: from the same state."""
    host = HostMemory([8])
    host.create_vm(VmSpec("primary", 2, seed=SEED))
    host.create_vm(VmSpec("backup", 2, seed=SEED))
    assert host.checksum("primary") == host.checksum("backup")
    return host


def record(host: HostMemory) -> tuple[list[list[GuestInput]], list[bytes]]:
    """Run the primary on a real driver; its inputs step by step and its outputs."""
    driver = InputDriver(packets=3)
    log, outputs = [], []
    for n in range(STEPS):
        inputs = driver.draw(n)
        log.append(inputs)
        outputs += [o.data for o in step(host, "primary", n, inputs).outputs]
    return log, outputs


def replay(host: HostMemory, log: list[list[GuestInput]]) -> list[bytes]:
    outputs = []
    for n, inputs in enumerate(log):
        outputs += [o.data for o in step(host, "backup", n, inputs).outputs]
    return outputs


def test_a_backup_given_the_whole_log_reaches_the_primary_byte_for_byte() -> None:
    host = pair()
    log, outputs = record(host)
    assert sum(len(inputs) for inputs in log) > STEPS  # the driver did send things

    replayed = replay(host, log)

    assert host.checksum("backup") == host.checksum("primary")
    assert replayed == outputs
    assert state_of(lambda p: host.read("backup", p), SEED) == state_of(
        lambda p: host.read("primary", p), SEED
    )


def test_without_the_log_the_backup_diverges() -> None:
    host = pair()
    log, outputs = record(host)

    replayed = replay(host, [[] for _ in log])

    assert host.checksum("backup") != host.checksum("primary")
    assert replayed == [] != outputs


@pytest.mark.parametrize("dropped", ["first", "last"])
def test_one_entry_dropped_from_the_log_makes_the_backup_diverge(dropped: str) -> None:
    """Whichever entry is missing, memory differs from then on, and so do the outputs."""
    host = pair()
    log, outputs = record(host)
    steps_with_input = [n for n, inputs in enumerate(log) if inputs]
    at = steps_with_input[0] if dropped == "first" else steps_with_input[-1]
    damaged = [list(inputs) for inputs in log]
    damaged[at] = damaged[at][1:]

    replayed = replay(host, damaged)

    assert host.checksum("backup") != host.checksum("primary")
    assert replayed != outputs


def test_two_runs_of_the_driver_never_give_the_same_inputs() -> None:
    """The inputs come from the OS's entropy pool: a second primary on the same seed does
    not end where the first did."""
    host = HostMemory([8])
    host.create_vm(VmSpec("primary", 2, seed=SEED))
    host.create_vm(VmSpec("twin", 2, seed=SEED))
    driver = InputDriver()
    for n in range(5):
        step(host, "primary", n, driver.draw(n))
        step(host, "twin", n, driver.draw(n))

    assert host.checksum("twin") != host.checksum("primary")


def test_every_packet_is_answered_once_with_outputs_numbered_without_gaps() -> None:
    host = pair()
    log, outputs = record(host)
    packets = sum(1 for inputs in log for i in inputs if i.kind is InputKind.PACKET)

    state = state_of(lambda p: host.read("primary", p), SEED)

    assert len(outputs) == packets == state.sent
    assert state.received == sum(len(inputs) for inputs in log)


def test_the_workload_never_writes_the_device_region() -> None:
    """Its pages hold the execution state and the rings: only inputs and outputs change them."""
    host = HostMemory([8])
    host.create_vm(VmSpec("quiet", 2, seed=SEED))
    step(host, "quiet", 0, [])
    before = host.copy_pages("quiet", list(range(1, DEVICE_PAGES))).tobytes()

    for n in range(1, 30):
        step(host, "quiet", n, [])

    assert host.copy_pages("quiet", list(range(1, DEVICE_PAGES))).tobytes() == before


def test_an_input_too_large_for_a_ring_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        GuestInput(0, InputKind.PACKET, bytes(4096))


def test_a_copy_of_the_device_region_tells_the_outputs_before_the_steps_run() -> None:
    """What a host reports when it decides a run is what the run then sends."""
    host = pair()
    driver = InputDriver(packets=3)
    record(host)  # some history in the rings first
    log = [driver.draw(n) for n in range(STEPS, STEPS + 10)]
    region = DeviceRegion(
        [row.tobytes() for row in host.copy_pages("primary", list(range(DEVICE_PAGES)))]
    )

    foreseen = region.outputs(SEED, [given for inputs in log for given in inputs])
    sent = [
        o for n, inputs in enumerate(log, STEPS) for o in step(host, "primary", n, inputs).outputs
    ]

    assert foreseen == sent
    assert len(sent) > 0
