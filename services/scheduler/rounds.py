"""Scheduling rounds: the high scheduler places first; the low one after it, or after a
bounded wait if the high one is down, saying so."""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog

from schemas import Envelope
from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import PlacementRequested, RoundCompleted, VmPlaced
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm
from services.scheduler.choose import Choice, choose
from services.scheduler.ledger import Ledger, reserve
from services.scheduler.state import SchedulerState
from shared.runtime import Runtime

log = structlog.get_logger("vplane.scheduler")


class Holder:
    """The one mutable cell: this scheduler's fold."""

    def __init__(self, priority: Owner) -> None:
        self.state = SchedulerState(priority)


def round_id(service: str, number: int) -> uuid.UUID:
    """One RoundCompleted per round, even if the scheduler restarts in the middle of it."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:{service}:round:{number}")


async def run_rounds(runtime: Runtime, holder: Holder, period: float, high_wait: float) -> None:
    while True:
        number = int(time.time() // period) + 1
        await asyncio.sleep(max(0.0, number * period - time.time()))
        without_high = False
        if holder.state.priority is Owner.LOW:
            without_high = not await _high_done(holder, number, high_wait)
        async with runtime.exclusive():
            placed, unplaced = await place_pending(runtime, holder, number)
            done = RoundCompleted(
                priority=holder.state.priority,
                round=number,
                placed=placed,
                unplaced=unplaced,
                without_high=without_high,
            )
            await runtime.publish([done], caused_by=None, ids=[round_id(runtime.name, number)])


async def _high_done(holder: Holder, number: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while holder.state.rounds.get(Owner.HIGH, -1) < number:
        if time.monotonic() > deadline:
            log.warning("high scheduler did not finish its round; going ahead", round=number)
            return False
        await asyncio.sleep(0.02)
    return True


async def place_pending(runtime: Runtime, holder: Holder, number: int) -> tuple[int, int]:
    placed = unplaced = 0
    for request in list(holder.state.pending.values()):
        if await _place(runtime, holder, request, number):
            placed += 1
        else:
            unplaced += 1
    return placed, unplaced


async def _place(
    runtime: Runtime, holder: Holder, request: Envelope[PlacementRequested], number: int
) -> bool:
    ask, owner = request.data, holder.state.priority
    picked: dict[str, Choice] = {}

    def pick(ledger: Ledger) -> CapacityReserved | None:
        choice = choose(ledger, ask, owner)
        if choice is not None:
            picked["choice"] = choice
        return None if choice is None else choice.reservation

    async def append_at(reservation: CapacityReserved, version: int) -> None:
        await runtime.append_at(reservation, version)

    async def catch_up(host: str) -> None:
        since = holder.state.ledger.versions.get(host, 0) + 1
        await runtime.catch_up((f"pool.{host}",), since)

    # A reservation of ours already in the ledger is this request's, made before a restart.
    held = next(
        (
            rs[ask.vm]
            for rs in holder.state.ledger.reservations.values()
            if ask.vm in rs and rs[ask.vm].owner == owner
        ),
        None,
    )
    if held is not None:
        picked["choice"] = Choice(held, ask.cpu, ask.mem_mib, degraded=False, score=0.0)
        conflicts = 0
    else:
        done = await reserve(lambda: holder.state.ledger, pick, append_at, catch_up)
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
    await runtime.publish([placed], caused_by=request)
    await send_create(runtime, holder, ask.vm, request)
    return True


def create_id(vm: str, owner: Owner) -> uuid.UUID:
    """The CreateVm for a placed VM has one id, so sending it again changes nothing."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:create:{owner.value}:{vm}")


async def send_create(
    runtime: Runtime, holder: Holder, vm: str, request: Envelope[PlacementRequested]
) -> None:
    placed, ask = holder.state.placed[vm], request.data
    create = CreateVm(
        vm=vm,
        cpu=placed.cpu,
        mem_mib=placed.mem_mib,
        host=placed.host,
        priority=placed.priority.value,
        workload=ask.workload,
        memory_mode=ask.memory_mode,
        seed=ask.seed,
    )
    env = Envelope.wrap(
        create, producer=runtime.name, caused_by=request, id=create_id(vm, placed.priority)
    )
    await runtime.bus.send(env)


async def resend_unconfirmed(runtime: Runtime, holder: Holder) -> None:
    """Placed before a restart, but no VmCreated yet: ask the host again."""
    for vm, request in holder.state.requests.items():
        if vm in holder.state.placed and vm not in holder.state.created:
            await send_create(runtime, holder, vm, request)
