"""Deciding a NUMA move, pure: what starts it and the typed rejections."""

from __future__ import annotations

from functools import reduce

import pytest

from schemas import Envelope, Event
from schemas.host import HostCrashed, HostRegistered
from schemas.numa import MoveVmNuma, NumaOrder, VmNumaMoveCompleted, VmNumaMoveStarted
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import MemoryMode, VmCreated
from services.hosts.domain import Facts, decide
from services.hosts.numa_moves import NumaOutlook
from services.hosts.state import Fleet, evolve

SEEN = NumaOutlook(vcpu_node=0, pages=300, free_frames=1000, moving=False, local_share=0.5)


def fleet() -> Fleet:
    def made(vm: str, host: str, mode: MemoryMode) -> VmCreated:
        return VmCreated(
            vm=vm, host=host, cpu=1, mem_mib=64, priority="low", powered_on=True, memory_mode=mode
        )

    events: list[Event] = [
        HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=4096, numa_nodes=2),
        HostRegistered(host="h2", cpu_cores=4, cpu_mhz=2000, mem_mib=4096, numa_nodes=2),
        made("full", "h1", MemoryMode.FULL),
        made("sizes", "h1", MemoryMode.ACCOUNTING),
        made("elsewhere", "h2", MemoryMode.FULL),
    ]
    return reduce(evolve, events, Fleet())


def move(cmd: MoveVmNuma, seen: NumaOutlook | None = SEEN, state: Fleet | None = None) -> Event:
    facts = Facts(numa_outlook=lambda _cmd: seen)
    [event] = decide(state or fleet(), Envelope.wrap(cmd, producer="test"), facts)
    return event


def test_a_move_starts_with_what_the_machine_sees() -> None:
    """The vCPUs' old node, the pages to move and the share before come from the machine;
    the node, order and pace from the command."""
    cmd = MoveVmNuma(host="h1", vm="full", node=1, order=NumaOrder.SEQUENTIAL, pages_per_tick=64)

    assert move(cmd) == VmNumaMoveStarted(
        host="h1",
        vm="full",
        node=1,
        from_node=0,
        order=NumaOrder.SEQUENTIAL,
        pages=300,
        pages_per_tick=64,
        local_share_before=0.5,
    )


@pytest.mark.parametrize(
    ("cmd", "seen", "code"),
    [
        (MoveVmNuma(host="h1", vm="full", node=2), SEEN, RejectionCode.INVALID_REQUEST),
        (MoveVmNuma(host="h1", vm="elsewhere", node=1), SEEN, RejectionCode.UNKNOWN_VM),
        (MoveVmNuma(host="h1", vm="nobody", node=1), SEEN, RejectionCode.UNKNOWN_VM),
        (MoveVmNuma(host="h1", vm="sizes", node=1), SEEN, RejectionCode.ACCOUNTING_ONLY),
        (MoveVmNuma(host="h9", vm="full", node=1), SEEN, RejectionCode.UNKNOWN_HOST),
        (MoveVmNuma(host="h1", vm="full", node=1), None, RejectionCode.UNKNOWN_HOST),
    ],
    ids=["unknown-node", "vm-on-another-host", "no-such-vm", "no-bytes", "no-host", "not-here"],
)
def test_a_move_the_fleet_cannot_run_is_refused(
    cmd: MoveVmNuma, seen: NumaOutlook | None, code: RejectionCode
) -> None:
    """A node the host does not have, a VM not on the host or without bytes, and a host
    not emulated here are refused with their code, and nothing starts."""
    refused = move(cmd, seen)

    assert isinstance(refused, CommandRejected)
    assert refused.code == code


def test_the_unknown_node_rejection_names_the_nodes_there_are() -> None:
    """The reason says which nodes the host has."""
    refused = move(MoveVmNuma(host="h1", vm="full", node=5))

    assert isinstance(refused, CommandRejected)
    assert refused.reason == "host h1 has NUMA nodes 0..1: there is no node 5"


def test_a_second_move_waits_for_the_first() -> None:
    """While a move of the VM is under way another is refused (wrong state)."""
    moving = NumaOutlook(vcpu_node=1, pages=0, free_frames=1000, moving=True, local_share=0.9)

    refused = move(MoveVmNuma(host="h1", vm="full", node=0), moving)

    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.WRONG_STATE


def test_a_node_without_room_for_the_pages_is_refused() -> None:
    """A node with fewer free frames than the pages to move refuses the move."""
    full = NumaOutlook(vcpu_node=0, pages=300, free_frames=299, moving=False, local_share=0.5)

    refused = move(MoveVmNuma(host="h1", vm="full", node=1), full)

    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.INSUFFICIENT_CAPACITY


def test_a_move_on_a_crashed_host_is_refused() -> None:
    """A host that is down moves nothing."""
    down = evolve(fleet(), HostCrashed(host="h1", vms_lost=["full"]))

    refused = move(MoveVmNuma(host="h1", vm="full", node=1), state=down)

    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.HOST_DOWN


def test_the_fold_keeps_a_move_from_its_start_to_its_completion() -> None:
    """The Started envelope is kept (its reports follow in its workflow) until Completed."""
    started = VmNumaMoveStarted(
        host="h1",
        vm="full",
        node=1,
        from_node=0,
        order=NumaOrder.HOT_FIRST,
        pages=10,
        pages_per_tick=10,
        local_share_before=0.5,
    )
    env = Envelope.wrap(started, producer="hosts")
    moving = evolve(fleet(), started, env)
    completed = VmNumaMoveCompleted(
        host="h1",
        vm="full",
        node=1,
        pages_moved=10,
        pages_left=0,
        large_pages_whole_before=2,
        large_pages_whole_after=1,
        ticks=5,
        local_share_before=0.5,
        local_share_after=1.0,
    )

    assert moving.numa_moves == {"full": env}
    assert evolve(moving, completed).numa_moves == {}
