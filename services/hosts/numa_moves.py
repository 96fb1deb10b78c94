"""NUMA moves inside a host, decided: pure, on the fleet and what the machine knows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas.numa import MoveVmNuma, VmNumaMoveStarted
from schemas.service import RejectionCode
from services.hosts.checks import Rejected, full_vm_on, host_up, not_migrating
from services.hosts.state import Fleet


@dataclass(frozen=True, slots=True)
class NumaOutlook:
    """What the machine knows about a VM that a move of it to a node is decided on."""

    vcpu_node: int
    pages: int  # the pages the move would copy
    free_frames: int  # on the target node
    moving: bool  # a move of the VM is under way
    local_share: float | None  # on its last tick; None if it made no access


NOTHING_TO_MOVE = NumaOutlook(vcpu_node=0, pages=0, free_frames=0, moving=False, local_share=None)


def start(
    fleet: Fleet, cmd: MoveVmNuma, outlook: Callable[[MoveVmNuma], NumaOutlook | None]
) -> VmNumaMoveStarted:
    """``outlook`` is None for a host this process does not emulate."""
    host = host_up(fleet, cmd.host)
    vm = full_vm_on(fleet, cmd.vm, cmd.host)
    nodes = host.spec.numa_nodes
    if cmd.node >= nodes:
        raise Rejected(
            RejectionCode.INVALID_REQUEST,
            f"host {cmd.host} has NUMA nodes 0..{nodes - 1}: there is no node {cmd.node}",
        )
    not_migrating(fleet, vm)
    seen = outlook(cmd)
    if seen is None:
        raise Rejected(RejectionCode.UNKNOWN_HOST, f"host {cmd.host} is not emulated here")
    if seen.moving:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"VM {vm.name} is moving between NUMA nodes already"
        )
    if seen.pages > seen.free_frames:
        raise Rejected(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"NUMA node {cmd.node} of {cmd.host} has {seen.free_frames} free frames; "
            f"{vm.name} has {seen.pages} pages to move there",
        )
    return VmNumaMoveStarted(
        host=cmd.host,
        vm=vm.name,
        node=cmd.node,
        from_node=seen.vcpu_node,
        order=cmd.order,
        pages=seen.pages,
        pages_per_tick=cmd.pages_per_tick,
        local_share_before=seen.local_share,
    )
