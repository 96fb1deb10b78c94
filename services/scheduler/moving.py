"""Migrations and file copies as workloads: reserve, ask the source host to start, and
settle the reservations when the host says the transfer ended.

A migration reserves the VM's size plus the migration bandwidth on its target and the
bandwidth on its source; a copy reserves bandwidth and storage throughput on both ends.
When a migration completes, the VM's own reservation moves to the target before
anything on the source is released, so the ledger never holds less than is in use.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable

import structlog

from schemas import Envelope, Event
from schemas.pool import CapacityReleased, CapacityReserved
from schemas.scheduling import (
    CopyRequested,
    CopyScheduled,
    MigrationRefused,
    MigrationRequested,
    MigrationScheduled,
)
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import StartCopy, StartMigration
from services.scheduler.choose import explained, rules_of, view_for, with_partners
from services.scheduler.core import (
    Affinity,
    Decision,
    Policy,
    Request,
    Resources,
    Rules,
    SchedulerError,
    decide,
)
from services.scheduler.holder import Holder
from services.scheduler.ledger import Amounts, Ledger
from services.scheduler.reserving import reserve_with
from services.scheduler.state import SchedulerState, incoming, outgoing, start_id
from shared.runtime import Runtime

log = structlog.get_logger("vplane.scheduler")

# Storage throughput a copy takes on each end, per Mbit/s of network (MB/s = Mbit/s / 8).
MBS_PER_MBPS = 1 / 8


class Outcome(enum.Enum):
    SCHEDULED = "scheduled"
    WAITING = "waiting"  # bandwidth or room may free up: next round
    REFUSED = "refused"


def settle_id(transfer: str, step: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"vplane:settle:{transfer}:{step}")


def migration_target(
    ledger: Ledger, holder: Holder, ask: MigrationRequested, *, rate: float
) -> tuple[Decision | None, str]:
    """Where the VM should go, or None with the reason: the VM's size plus the migration
    bandwidth must fit, its rules hold, and it must leave the host it is on."""
    held = ledger.held(ask.vm)
    if held is None:
        return None, f"VM {ask.vm} is not placed"
    size = Amounts.of(held)
    try:
        rules = migration_rules(holder.state, ask, held.host)
        request = Request(
            ask.migration,
            Resources(size.cpu_mhz, size.mem_mib, rate, 0.0),
            rules=rules,
        )
        pool = view_for(ledger, holder.state.priority, holder.knobs.ha_failures)
        decision = decide(pool, request, Policy.BALANCED)
    except SchedulerError as err:
        return None, str(err)
    if decision.host is None:
        return None, f"no host can take {ask.vm} (the {decision.reason} filter left none)"
    return decision, ""


def migration_rules(state: SchedulerState, ask: MigrationRequested, source: str) -> Rules:
    """The VM's own rules for its new host: it must leave ``source``; a named target is the
    only host it may go to. A partner VM that is moving too counts where it is heading
    once its migration is scheduled, and not at all before: of a pair that must stay
    together, the first to be scheduled goes anywhere and the second follows it."""
    own = rules_of(state.rules[ask.vm]) if ask.vm in state.rules else Rules()
    rules = with_partners(own, ask.vm, state.rules)
    near, apart = rules.vm_affinity, rules.vm_anti_affinity
    hosts, away = rules.host_affinity, rules.host_anti_affinity
    away_hosts = set(away.must) | {source}
    follow = {state.heading[vm] for vm in near.must if vm in state.heading}
    avoid = {state.heading[vm] for vm in apart.must if vm in state.heading}
    if ask.target:
        hosts = Affinity(frozenset({ask.target}))
    elif follow:
        hosts = Affinity(frozenset(follow), hosts.should)
    return Rules(
        vm_affinity=Affinity(
            frozenset(vm for vm in near.must if vm not in state.moving),
            frozenset(vm for vm in near.should if vm not in state.moving),
        ),
        vm_anti_affinity=apart,
        host_affinity=hosts,
        host_anti_affinity=Affinity(frozenset(away_hosts | avoid), away.should - hosts.must),
    )


async def schedule_migration(
    runtime: Runtime, holder: Holder, request: Envelope[MigrationRequested], number: int
) -> Outcome:
    ask, owner = request.data, holder.state.priority
    rate = holder.knobs.migration_mbps
    ledger = holder.state.ledger
    vm = ledger.held(ask.vm)
    if vm is None:
        return await _refuse(runtime, request, f"VM {ask.vm} is not placed")
    source = vm.host
    if ask.target == source:
        return await _refuse(runtime, request, f"VM {ask.vm} is already on {source}")
    decided: dict[str, Decision] = {}
    conflicts = 0
    target_held = ledger.held(incoming(ask.migration))
    if target_held is None:

        def pick_target() -> CapacityReserved | None:
            decision, _ = migration_target(holder.state.ledger, holder, ask, rate=rate)
            if decision is None or decision.host is None:
                return None
            decided["target"] = decision
            return CapacityReserved(
                host=decision.host,
                reservation=incoming(ask.migration),
                workload=ask.vm,
                owner=owner,
                purpose="migration",
                cpu_mhz=vm.cpu_mhz,
                mem_mib=vm.mem_mib,
                net_mbps=rate,
            )

        done = await reserve_with(runtime, holder, pick_target)
        conflicts += done.conflicts
        if done.reservation is None:
            _, why = migration_target(holder.state.ledger, holder, ask, rate=0.0)
            if why:  # it fits nowhere even without the bandwidth
                return await _refuse(runtime, request, why)
            return Outcome.WAITING
        target_held = done.reservation
    target = target_held.host

    if not holder.state.ledger.holds(outgoing(ask.migration)):
        source_done = await reserve_with(
            runtime,
            holder,
            lambda: _bandwidth(holder, outgoing(ask.migration), source, ask.vm, rate),
        )
        conflicts += source_done.conflicts
        if source_done.reservation is None:
            await runtime.publish(
                [CapacityReleased(host=target, reservation=incoming(ask.migration))],
                caused_by=None,
                ids=[settle_id(ask.migration, f"unheld-{number}")],
            )
            return Outcome.WAITING

    decision = decided.get("target")
    scheduled = MigrationScheduled(
        migration=ask.migration,
        vm=ask.vm,
        source=source,
        target=target,
        priority=owner,
        round=number,
        reason=ask.reason,
        rate_mbps=rate,
        expected_seconds=round(vm.mem_mib * 8 / rate, 3),
        conflicts=conflicts,
        **(explained(decision) if decision is not None else {}),
    )
    await runtime.publish([scheduled], caused_by=request)
    await send_start(runtime, scheduled, request)
    return Outcome.SCHEDULED


async def schedule_copy(
    runtime: Runtime, holder: Holder, request: Envelope[CopyRequested], number: int
) -> Outcome:
    ask, owner = request.data, holder.state.priority
    ledger = holder.state.ledger
    for end in (ask.source, ask.target):
        if end in ledger.failed:
            return await _refuse(runtime, request, f"host {end} has failed")
    conflicts = 0
    storage = ask.rate_mbps * MBS_PER_MBPS
    for end, reservation in (
        (ask.target, incoming(ask.copy_id)),
        (ask.source, outgoing(ask.copy_id)),
    ):
        if holder.state.ledger.holds(reservation):
            continue
        done = await reserve_with(
            runtime, holder, _one_end(holder, reservation, end, ask.copy_id, ask.rate_mbps, storage)
        )
        conflicts += done.conflicts
        if done.reservation is None:
            if end == ask.source and holder.state.ledger.holds(incoming(ask.copy_id)):
                await runtime.publish(
                    [CapacityReleased(host=ask.target, reservation=incoming(ask.copy_id))],
                    caused_by=None,
                    ids=[settle_id(ask.copy_id, f"unheld-{number}")],
                )
            return Outcome.WAITING
    scheduled = CopyScheduled(
        copy_id=ask.copy_id,
        source=ask.source,
        target=ask.target,
        priority=owner,
        round=number,
        size_mib=ask.size_mib,
        rate_mbps=ask.rate_mbps,
        expected_seconds=round(ask.size_mib * 8 / ask.rate_mbps, 3),
        conflicts=conflicts,
    )
    await runtime.publish([scheduled], caused_by=request)
    await send_start(runtime, scheduled, request)
    return Outcome.SCHEDULED


def _one_end(
    holder: Holder, reservation: str, host: str, workload: str, rate: float, storage: float
) -> Callable[[], CapacityReserved | None]:
    return lambda: _bandwidth(holder, reservation, host, workload, rate, storage)


def _bandwidth(
    holder: Holder, reservation: str, host: str, workload: str, rate: float, storage: float = 0.0
) -> CapacityReserved | None:
    """Bandwidth (and storage throughput) on one end, if it has that much free."""
    want = Amounts(net_mbps=rate, storage_mbs=storage)
    ledger = holder.state.ledger
    if host not in ledger.capacity or not want.fits_in(ledger.free(host)):
        return None
    return CapacityReserved(
        host=host,
        reservation=reservation,
        workload=workload,
        owner=holder.state.priority,
        purpose="copy" if storage else "migration",
        cpu_mhz=0,
        mem_mib=0,
        net_mbps=rate,
        storage_mbs=storage,
    )


async def _refuse(
    runtime: Runtime, request: Envelope[MigrationRequested] | Envelope[CopyRequested], why: str
) -> Outcome:
    ask = request.data
    refusal: Event
    if isinstance(ask, MigrationRequested):
        refusal = MigrationRefused(migration=ask.migration, vm=ask.vm, reason=why)
    else:
        refusal = CommandRejected(
            about=ask.aggregate(),
            command_id=request.causation_id or request.id,
            command_type="CopyFile",
            code=RejectionCode.WRONG_STATE,
            reason=why,
        )
    await runtime.publish([refusal], caused_by=request)
    return Outcome.REFUSED


async def send_start(
    runtime: Runtime,
    scheduled: MigrationScheduled | CopyScheduled,
    caused_by: Envelope[MigrationRequested] | Envelope[CopyRequested] | None = None,
) -> None:
    command: StartMigration | StartCopy
    if isinstance(scheduled, MigrationScheduled):
        ident = scheduled.migration
        command = StartMigration(
            host=scheduled.source,
            target=scheduled.target,
            rate_mbps=scheduled.rate_mbps,
            migration=ident,
            vm=scheduled.vm,
        )
    else:
        ident = scheduled.copy_id
        command = StartCopy(
            host=scheduled.source,
            target=scheduled.target,
            rate_mbps=scheduled.rate_mbps,
            copy_id=ident,
            size_mib=scheduled.size_mib,
        )
    env = Envelope.wrap(command, producer=runtime.name, caused_by=caused_by, id=start_id(ident))
    await runtime.bus.send(env)


async def settle(runtime: Runtime, holder: Holder) -> int:
    """Release what ended transfers held; a completed migration's VM is reserved on its
    target first. Every step has a fixed id, so a restart repeats none."""
    count = 0
    for ident in holder.state.unsettled():
        scheduled = holder.state.scheduled(ident)
        if scheduled is None:
            continue
        steps: list[tuple[str, Event]] = []
        ledger = holder.state.ledger
        if isinstance(scheduled, MigrationScheduled) and holder.state.outcomes[ident]:
            vm = ledger.held(scheduled.vm)
            if vm is not None and vm.host != scheduled.target:
                moved = vm.model_copy(update={"host": scheduled.target})
                steps.append(("vm-in", moved))
            if scheduled.vm in ledger.reservations.get(scheduled.source, {}):
                steps.append(
                    ("vm-out", CapacityReleased(host=scheduled.source, reservation=scheduled.vm))
                )
        if ledger.holds(incoming(ident)):
            steps.append(
                ("in", CapacityReleased(host=scheduled.target, reservation=incoming(ident)))
            )
        # Released last: its release marks the transfer settled.
        steps.append(("out", CapacityReleased(host=scheduled.source, reservation=outgoing(ident))))
        for step, event in steps:
            await runtime.publish([event], caused_by=None, ids=[settle_id(ident, step)])
        count += 1
        log.info("transfer settled", transfer=ident, completed=holder.state.outcomes[ident])
    return count


async def resend_unstarted(runtime: Runtime, holder: Holder) -> None:
    """Scheduled before a restart, and the host has said nothing of it yet: ask again."""
    state = holder.state
    scheduled: list[tuple[str, MigrationScheduled | CopyScheduled]] = [
        *state.migrations.items(),
        *state.copies.items(),
    ]
    for ident, transfer in scheduled:
        if ident not in state.started and ident not in state.outcomes:
            await send_start(runtime, transfer)
