"""Placing a VM, decided pure: reserve on the chosen host, say where and why, and ask the
host to create it, all in one outcome (the reservation at the host's pool version)."""

from __future__ import annotations

from schemas import Envelope
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.scheduling import PlacementRequested, VmPlaced
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm
from services.scheduler.choose import choose
from services.scheduler.holder import Holder
from services.scheduler.ledger import Ledger
from shared.outcome import Outcome, attempt


def reserving(ledger: Ledger, reservation: CapacityReserved) -> dict[str, int]:
    """The expectation that guards a reservation: its host's pool is as it was seen."""
    return {f"pool/{reservation.host}": ledger.versions.get(reservation.host, 0)}


def place(holder: Holder, request: Envelope[PlacementRequested], number: int) -> Outcome:
    ask, owner, state = request.data, holder.state.priority, holder.state
    choice = choose(state.ledger, ask, owner, holder.knobs.ha_failures, holder.pools, state.rules)
    if choice is None:
        refusal = CommandRejected(
            about=f"vm/{ask.vm}",
            command_id=request.causation_id or request.id,
            command_type="PlaceVm",
            code=RejectionCode.INSUFFICIENT_CAPACITY,
            reason=f"no host has room for {ask.vm} ({ask.cpu} vCPU, {ask.mem_mib} MiB)",
        )
        return Outcome(events=[refusal], cause=request, key="place")
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
        conflicts=attempt.get(),
    )
    return Outcome(
        events=[choice.reservation, placed],
        commands=[create_vm(placed, request)],
        cause=request,
        key="place",
        expect=reserving(state.ledger, choice.reservation),
        on_landed=[lambda: holder.pools.reserved(holder.state.ledger, choice)],
    )


def create_vm(placed: VmPlaced, request: Envelope[PlacementRequested]) -> CreateVm:
    ask = request.data
    return CreateVm(
        vm=placed.vm,
        cpu=placed.cpu,
        mem_mib=placed.mem_mib,
        host=placed.host,
        priority=placed.priority.value,
        workload=ask.workload,
        memory_mode=ask.memory_mode,
        seed=ask.seed,
        template=ask.template,
        power_on=ask.power_on,
        disk_gib=ask.disk_gib,
        checkpoint=ask.checkpoint,
        writes=ask.writes,
        fork_of=ask.fork_of,
        inputs=ask.inputs,
        backup_of=ask.backup_of,
    )


def release_destroyed(holder: Holder) -> list[Outcome]:
    """A destroyed VM of ours gives its capacity back."""
    out = []
    for vm in sorted(holder.state.destroyed):
        held = holder.state.ledger.held(vm)
        if held is None or held.owner != holder.state.priority:
            continue
        release = CapacityReleased(host=held.host, reservation=vm)
        out.append(Outcome(events=[release], key=f"destroyed:{vm}"))
    return out
