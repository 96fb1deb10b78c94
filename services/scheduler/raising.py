"""Raising degraded VMs: a VM placed with less than it asked for gets its desired size
on its host as soon as that host has the room (without the HA spare, for the low one)."""

from __future__ import annotations

import uuid
from functools import partial

import numpy as np

from schemas import Envelope
from schemas.pool import CapacityReserved
from schemas.scheduling import VmRaised
from schemas.vm import ResizeVm
from services.scheduler.choose import MHZ_PER_VCPU, demand
from services.scheduler.holder import Holder
from services.scheduler.reserving import reserve_with
from shared.runtime import Runtime


def raise_id(vm: str, what: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:raise:{vm}:{what}")


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
    return held.model_copy(update={"cpu_mhz": desired.cpu_mhz, "mem_mib": desired.mem_mib})


async def raise_degraded(runtime: Runtime, holder: Holder) -> int:
    raised = 0
    for vm in sorted(holder.state.degraded):
        request = holder.state.requests[vm]
        ask = request.data
        held = holder.state.ledger.held(vm)
        if held is None:
            continue
        before = holder.state.placed[vm]
        if held.mem_mib < ask.mem_mib or held.cpu_mhz < ask.cpu * MHZ_PER_VCPU:
            done = await reserve_with(runtime, holder, partial(room_to_raise, holder, vm))
            if done.reservation is None:
                continue
        event = VmRaised(
            vm=vm,
            host=held.host,
            cpu=ask.cpu,
            mem_mib=ask.mem_mib,
            from_cpu=before.cpu,
            from_mem_mib=before.mem_mib,
        )
        await runtime.publish([event], caused_by=request, ids=[raise_id(vm, "event")])
        resize = ResizeVm(vm=vm, host=held.host, cpu=ask.cpu, mem_mib=ask.mem_mib)
        await runtime.bus.send(
            Envelope.wrap(
                resize, producer=runtime.name, caused_by=request, id=raise_id(vm, "resize")
            )
        )
        raised += 1
    return raised
