"""Raising degraded VMs: a VM placed with less than it asked for gets its desired size
on its host as soon as that host has the room (without the HA spare, for the low one)."""

from __future__ import annotations

import numpy as np

from schemas.pool import MHZ_PER_VCPU, CapacityReserved
from schemas.scheduling import VmRaised
from schemas.vm import ResizeVm
from services.scheduler.choose import demand
from services.scheduler.holder import Holder
from services.scheduler.placing import reserving
from shared.outcome import Outcome


def room_to_raise(holder: Holder, vm: str) -> CapacityReserved | None:
    """The VM's reservation at its desired size, if its host can give the difference."""
    state = holder.state
    held, request = state.ledger.held(vm), state.requests.get(vm)
    if held is None or request is None or not state.ledger.usable(held.host):
        return None
    desired = demand(request.data.cpu, request.data.mem_mib)
    pool = holder.pools.get(state.ledger, state.priority, holder.knobs.ha_failures)
    row = pool.row(held.host)
    more = desired.vector() - np.array([held.cpu_mhz, held.mem_mib, 0.0, 0.0])
    if np.any(more > pool.free[:, row] + 1e-9):
        return None
    bigger = {"cpu_mhz": desired.cpu_mhz, "mem_mib": desired.mem_mib, "replaces": None}
    return held.model_copy(update=bigger)


def raise_degraded(holder: Holder, vm: str) -> Outcome | None:
    """The raise of one degraded VM, if its host has the room now: the bigger
    reservation, VmRaised and the host's ResizeVm in one outcome."""
    state = holder.state
    request, held = state.requests[vm], state.ledger.held(vm)
    if held is None:
        return None
    ask, before = request.data, state.placed[vm]
    events: list[CapacityReserved | VmRaised] = []
    expect: dict[str, int] = {}
    if held.mem_mib < ask.mem_mib or held.cpu_mhz < ask.cpu * MHZ_PER_VCPU:
        bigger = room_to_raise(holder, vm)
        if bigger is None:
            return None
        events.append(bigger)
        expect = reserving(state.ledger, bigger)
    events.append(
        VmRaised(
            vm=vm,
            host=held.host,
            cpu=ask.cpu,
            mem_mib=ask.mem_mib,
            from_cpu=before.cpu,
            from_mem_mib=before.mem_mib,
        )
    )
    resize = ResizeVm(vm=vm, host=held.host, cpu=ask.cpu, mem_mib=ask.mem_mib)
    return Outcome(
        events=events,
        commands=[resize],
        cause=request,
        key="raise",
        expect=expect,
    )
