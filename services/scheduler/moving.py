"""Migrations and file copies as workloads: reserve, ask the source host to start, and
settle the reservations when the host says the transfer ended.

A migration reserves the VM's size plus the migration bandwidth on its target and the
bandwidth on its source; a copy reserves bandwidth and storage throughput on both ends.
When a migration completes, the VM's own reservation moves to the target before
anything on the source is released, so the ledger never holds less than is in use.
"""

from __future__ import annotations

import enum

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
from services.scheduler.placing import reserving
from services.scheduler.state import SchedulerState, incoming, outgoing
from shared.outcome import Outcome, attempt

log = structlog.get_logger("vplane.scheduler")

# Storage throughput a copy takes on each end, per Mbit/s of network (MB/s = Mbit/s / 8).
MBS_PER_MBPS = 1 / 8


class Progress(enum.Enum):
    SCHEDULED = "scheduled"
    WAITING = "waiting"  # bandwidth or room may free up: next round
    REFUSED = "refused"


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


def schedule_migration(
    holder: Holder, request: Envelope[MigrationRequested], number: int
) -> tuple[Outcome | None, Progress]:
    """The target's room and bandwidth and the source's bandwidth, reserved together with
    MigrationScheduled and the source host's StartMigration; or why not yet."""
    ask, owner = request.data, holder.state.priority
    rate = holder.knobs.migration_mbps
    ledger = holder.state.ledger
    vm = ledger.held(ask.vm)
    if vm is None:
        return _refuse(request, f"VM {ask.vm} is not placed")
    source = vm.host
    if ask.target == source:
        return _refuse(request, f"VM {ask.vm} is already on {source}")
    decision, _ = migration_target(ledger, holder, ask, rate=rate)
    if decision is None or decision.host is None:
        _, why = migration_target(ledger, holder, ask, rate=0.0)
        if why:  # it fits nowhere even without the bandwidth
            return _refuse(request, why)
        return None, Progress.WAITING
    target_in = CapacityReserved(
        host=decision.host,
        reservation=incoming(ask.migration),
        workload=ask.vm,
        owner=owner,
        purpose="migration",
        cpu_mhz=vm.cpu_mhz,
        mem_mib=vm.mem_mib,
        net_mbps=rate,
    )
    source_out = _bandwidth(holder, outgoing(ask.migration), source, ask.vm, rate)
    if source_out is None:
        return None, Progress.WAITING
    scheduled = MigrationScheduled(
        migration=ask.migration,
        vm=ask.vm,
        source=source,
        target=decision.host,
        priority=owner,
        round=number,
        reason=ask.reason,
        rate_mbps=rate,
        expected_seconds=round(vm.mem_mib * 8 / rate, 3),
        conflicts=attempt.get(),
        mode=ask.mode,
        downtime_ms=ask.downtime_ms,
        **explained(decision),
    )
    expect = {**reserving(ledger, target_in), **reserving(ledger, source_out)}
    outcome = Outcome(
        events=[target_in, source_out, scheduled],
        commands=[start_command(scheduled)],
        cause=request,
        key="schedule",
        expect=expect,
    )
    return outcome, Progress.SCHEDULED


def schedule_copy(
    holder: Holder, request: Envelope[CopyRequested], number: int
) -> tuple[Outcome | None, Progress]:
    ask, owner = request.data, holder.state.priority
    ledger = holder.state.ledger
    for end in (ask.source, ask.target):
        if end in ledger.failed:
            return _refuse(request, f"host {end} has failed")
    storage = ask.rate_mbps * MBS_PER_MBPS
    ends = [
        _bandwidth(holder, incoming(ask.copy_id), ask.target, ask.copy_id, ask.rate_mbps, storage),
        _bandwidth(holder, outgoing(ask.copy_id), ask.source, ask.copy_id, ask.rate_mbps, storage),
    ]
    if ends[0] is None or ends[1] is None:
        return None, Progress.WAITING
    scheduled = CopyScheduled(
        copy_id=ask.copy_id,
        source=ask.source,
        target=ask.target,
        priority=owner,
        round=number,
        size_mib=ask.size_mib,
        rate_mbps=ask.rate_mbps,
        expected_seconds=round(ask.size_mib * 8 / ask.rate_mbps, 3),
        conflicts=attempt.get(),
    )
    outcome = Outcome(
        events=[ends[0], ends[1], scheduled],
        commands=[start_command(scheduled)],
        cause=request,
        key="schedule",
        expect={**reserving(ledger, ends[0]), **reserving(ledger, ends[1])},
    )
    return outcome, Progress.SCHEDULED


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


def _refuse(
    request: Envelope[MigrationRequested] | Envelope[CopyRequested], why: str
) -> tuple[Outcome, Progress]:
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
    return Outcome(events=[refusal], cause=request, key="schedule"), Progress.REFUSED


def start_command(scheduled: MigrationScheduled | CopyScheduled) -> StartMigration | StartCopy:
    if isinstance(scheduled, MigrationScheduled):
        return StartMigration(
            host=scheduled.source,
            target=scheduled.target,
            rate_mbps=scheduled.rate_mbps,
            migration=scheduled.migration,
            vm=scheduled.vm,
            mode=scheduled.mode,
            downtime_ms=scheduled.downtime_ms,
        )
    return StartCopy(
        host=scheduled.source,
        target=scheduled.target,
        rate_mbps=scheduled.rate_mbps,
        copy_id=scheduled.copy_id,
        size_mib=scheduled.size_mib,
    )


def settle(holder: Holder) -> list[Outcome]:
    """Release what ended transfers held, each transfer in one outcome; a completed
    migration's VM is reserved on its target before anything is released."""
    out = []
    for ident in holder.state.unsettled():
        scheduled = holder.state.scheduled(ident)
        if scheduled is None:
            continue
        steps: list[Event] = []
        ledger = holder.state.ledger
        arriving = incoming(ident)
        if isinstance(scheduled, MigrationScheduled) and holder.state.outcomes[ident]:
            vm = ledger.held(scheduled.vm)
            if vm is not None and vm.host != scheduled.target:
                # In the place of the incoming reservation, in one step: the target never
                # counts the VM twice.
                replaces = arriving if ledger.holds(arriving) else None
                moved = vm.model_copy(update={"host": scheduled.target, "replaces": replaces})
                steps.append(moved)
            if scheduled.vm in ledger.reservations.get(scheduled.source, {}):
                steps.append(CapacityReleased(host=scheduled.source, reservation=scheduled.vm))
        if ledger.holds(arriving) and not any(
            isinstance(step, CapacityReserved) and step.replaces == arriving for step in steps
        ):
            steps.append(CapacityReleased(host=scheduled.target, reservation=arriving))
        # Released last: its release marks the transfer settled.
        steps.append(CapacityReleased(host=scheduled.source, reservation=outgoing(ident)))
        out.append(Outcome(events=steps, key=f"settle:{ident}"))
        log.info("transfer settled", transfer=ident, completed=holder.state.outcomes[ident])
    return out
