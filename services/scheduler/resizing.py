"""Resizes through the ledger: a VM grows only into room reserved for it first; what it
no longer uses is released once its host has resized it (or refused to)."""

from __future__ import annotations

from schemas import Envelope, Message
from schemas.pool import MHZ_PER_VCPU, CapacityReserved, vcpus_covered
from schemas.scheduling import ChangeVmSize, VmResizeRequested
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import ResizeVm
from services.scheduler.holder import Holder
from services.scheduler.placing import reserving
from services.scheduler.state import SchedulerState
from shared.outcome import Outcome, answer


def change_size(state: SchedulerState, env: Envelope[Message]) -> Outcome:
    cmd = env.data
    assert isinstance(cmd, ChangeVmSize)

    def refuse(code: RejectionCode, reason: str) -> Outcome:
        return answer(env, CommandRejected.of(env, code, reason))

    ledger = state.ledger
    held, size = ledger.held(cmd.vm), state.sizes.get(cmd.vm)
    if held is None or size is None or held.purpose != "vm":
        return refuse(RejectionCode.UNKNOWN_VM, f"VM {cmd.vm} is not placed")
    if held.owner != state.priority:
        return refuse(RejectionCode.WRONG_STATE, f"VM {cmd.vm} is {held.owner.value} priority")
    if cmd.vm in state.resizing or cmd.vm in state.moving:
        return refuse(RejectionCode.WRONG_STATE, f"VM {cmd.vm} is being resized or moved")
    cpu, mem = cmd.cpu or size[0], cmd.mem_mib or size[1]
    need = CapacityReserved(
        **{
            **held.model_dump(),
            "cpu_mhz": max(held.cpu_mhz, cpu * MHZ_PER_VCPU),
            "mem_mib": max(held.mem_mib, float(mem)),
            "replaces": None,
        }
    )
    more_cpu, more_mem = need.cpu_mhz - held.cpu_mhz, need.mem_mib - held.mem_mib
    free = ledger.free(held.host)
    if more_cpu > free.cpu_mhz + 1e-9 or more_mem > free.mem_mib + 1e-9:
        return refuse(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"host {held.host} has {free.cpu_mhz:.0f} MHz and {free.mem_mib:.0f} MiB free; "
            f"{cmd.vm} at {cpu} vCPU, {mem} MiB needs {more_cpu:.0f} MHz and "
            f"{more_mem:.0f} MiB more",
        )
    asked = VmResizeRequested(
        vm=cmd.vm,
        host=held.host,
        cpu=cpu,
        mem_mib=mem,
        from_cpu=size[0],
        from_mem_mib=size[1],
    )
    grows = more_cpu > 0 or more_mem > 0
    return Outcome(
        events=[need, asked] if grows else [asked],
        commands=[ResizeVm(vm=cmd.vm, host=held.host, cpu=cpu, mem_mib=mem)],
        cause=env,
        expect=reserving(ledger, need) if grows else {},
    )


def follow_sizes(holder: Holder) -> list[Outcome]:
    """This scheduler's VM reservations brought down to what their hosts run, once no
    resize of them is pending (a shrink done, a grow refused)."""
    state = holder.state
    out = []
    for vm in sorted(state.oversized):
        held, size = state.ledger.held(vm), state.sizes.get(vm)
        if held is None or size is None or vm not in state.placed:
            continue
        if vm in state.resizing or vm in state.moving:
            continue
        cpu_mhz = size[0] * MHZ_PER_VCPU
        too_much_cpu = vcpus_covered(held.cpu_mhz) > size[0]
        if not too_much_cpu and held.mem_mib <= size[1]:
            continue
        less = held.model_copy(
            update={
                "cpu_mhz": cpu_mhz if too_much_cpu else held.cpu_mhz,
                "mem_mib": min(held.mem_mib, float(size[1])),
                "replaces": None,
            }
        )
        out.append(Outcome(events=[less], key=f"resized:{vm}:{size[0]}:{size[1]}"))
    return out
