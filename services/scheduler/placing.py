"""Placing a VM: reserve on the chosen host, say where and why, ask the host to create it."""

from __future__ import annotations

import asyncio
import uuid

from schemas import Envelope
from schemas.pool import CapacityReleased, CapacityReserved, Owner
from schemas.scheduling import PlacementRequested, VmPlaced
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm
from services.scheduler.choose import Choice, choose
from services.scheduler.holder import Holder
from services.scheduler.reserving import reserve_with
from shared.runtime import Runtime


async def place(
    runtime: Runtime, holder: Holder, request: Envelope[PlacementRequested], number: int
) -> bool:
    ask, owner = request.data, holder.state.priority
    picked: dict[str, Choice] = {}

    def pick() -> CapacityReserved | None:
        state = holder.state
        choice = choose(
            state.ledger, ask, owner, holder.knobs.ha_failures, holder.pools, state.rules
        )
        if choice is not None:
            picked["choice"] = choice
        return None if choice is None else choice.reservation

    # A reservation of ours already in the ledger is this request's, made before a restart.
    held = holder.state.ledger.held(ask.vm)
    if held is not None and held.owner == owner:
        picked["choice"] = Choice(held, ask.cpu, ask.mem_mib, degraded=False, score=0.0)
        conflicts = 0
    else:
        done = await reserve_with(runtime, holder, pick)
        conflicts = done.conflicts
        if done.reservation is None:
            refusal = CommandRejected(
                about=f"vm/{ask.vm}",
                command_id=request.causation_id or request.id,
                command_type="PlaceVm",
                code=RejectionCode.INSUFFICIENT_CAPACITY,
                reason=f"no host has room for {ask.vm} ({ask.cpu} vCPU, {ask.mem_mib} MiB)",
            )
            await runtime.publish([refusal], caused_by=request)
            return False
        holder.pools.reserved(holder.state.ledger, picked["choice"])
    choice = picked["choice"]
    placed = VmPlaced(
        vm=ask.vm,
        host=choice.reservation.host,
        priority=owner,
        round=number,
        cpu=choice.cpu,
        mem_mib=choice.mem_mib,
        degraded=choice.degraded,
        score=choice.score,
        runners_up=choice.runners_up,
        filtered=choice.filtered,
        conflicts=conflicts,
    )
    # Both in flight at once: were the process to stop between them, a restart finds the
    # reservation and says VmPlaced again, and the CreateVm's fixed id makes a resend moot.
    await asyncio.gather(
        runtime.publish([placed], caused_by=request),
        runtime.bus.send(create_envelope(runtime, placed, request)),
    )
    return True


def create_id(vm: str, owner: Owner) -> uuid.UUID:
    """The CreateVm for a placed VM has one id, so sending it again changes nothing."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:create:{owner.value}:{vm}")


def create_envelope(
    runtime: Runtime, placed: VmPlaced, request: Envelope[PlacementRequested]
) -> Envelope[CreateVm]:
    ask = request.data
    create = CreateVm(
        vm=placed.vm,
        cpu=placed.cpu,
        mem_mib=placed.mem_mib,
        host=placed.host,
        priority=placed.priority.value,
        workload=ask.workload,
        memory_mode=ask.memory_mode,
        seed=ask.seed,
    )
    return Envelope.wrap(
        create, producer=runtime.name, caused_by=request, id=create_id(placed.vm, placed.priority)
    )


async def resend_unconfirmed(runtime: Runtime, holder: Holder) -> None:
    """Placed before a restart, but no VmCreated yet: ask the host again."""
    for vm, request in holder.state.requests.items():
        if vm in holder.state.placed and vm not in holder.state.created:
            await runtime.bus.send(create_envelope(runtime, holder.state.placed[vm], request))


async def release_destroyed(runtime: Runtime, holder: Holder) -> int:
    """A destroyed VM of ours gives its capacity back."""
    released = 0
    for vm in sorted(holder.state.destroyed):
        held = holder.state.ledger.held(vm)
        if held is None or held.owner != holder.state.priority:
            continue
        release = CapacityReleased(host=held.host, reservation=vm)
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:destroyed:{vm}")
        await runtime.publish([release], caused_by=None, ids=[ident])
        released += 1
    return released
