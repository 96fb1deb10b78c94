"""Maintenance mode: a host takes no new work and is emptied by migrations.

Entering it is decided against the pool as it is (the core's evacuation plan must fit,
and the host may not be the last usable one); the migrations are then queued like any
other and scheduled in the rounds, each to the best host at that time. A VM that lands
on the host meanwhile, or whose migration was refused, is swept up in a later round
(once per maintenance), and the host is announced empty when it holds no VM.
"""

from __future__ import annotations

from schemas import Envelope, Event, Message
from schemas.pool import Owner
from schemas.scheduling import (
    HostEvacuated,
    MaintainCheapest,
    MaintenanceEnded,
    MaintenanceStarted,
    MigrationReason,
    MigrationRequested,
    SetMaintenance,
)
from schemas.service import CommandRejected, RejectionCode
from services.scheduler.choose import VM, every_rule, pool_of
from services.scheduler.core import (
    LastUsableHost,
    Pool,
    Rules,
    SchedulerError,
    cheapest_to_evacuate,
    plan_evacuation,
)
from services.scheduler.state import SchedulerState
from shared.effects import named


def maintenance_migration(host: str, visit: str, vm: str) -> str:
    """One migration id per VM per maintenance visit, so a retry asks for nothing twice."""
    return named("mnt", host, visit, vm)


def decide_maintenance(state: SchedulerState, env: Envelope[Message]) -> list[Event]:  # noqa: PLR0911
    cmd = env.data
    assert isinstance(cmd, SetMaintenance)
    ledger = state.ledger

    def refuse(code: RejectionCode, reason: str) -> list[Event]:
        return [CommandRejected.of(env, code, reason)]

    if cmd.host not in ledger.capacity:
        return refuse(RejectionCode.UNKNOWN_HOST, f"no host {cmd.host}")
    if not cmd.on:
        if cmd.host not in ledger.maintenance:
            return refuse(RejectionCode.WRONG_STATE, f"host {cmd.host} is not in maintenance")
        return [MaintenanceEnded(host=cmd.host)]
    if cmd.host in ledger.maintenance:
        return refuse(RejectionCode.WRONG_STATE, f"host {cmd.host} is already in maintenance")
    if cmd.host in ledger.failed:
        return refuse(RejectionCode.WRONG_STATE, f"host {cmd.host} has failed")
    pool = pool_of(ledger)
    try:
        events, _ = _enter(state, pool, cmd.host, str(env.id))
    except LastUsableHost as err:
        return refuse(RejectionCode.LAST_USABLE_HOST, str(err))
    except SchedulerError as err:
        return refuse(RejectionCode.CANNOT_EVACUATE, str(err))
    return events


def decide_cheapest(state: SchedulerState, env: Envelope[Message]) -> list[Event]:
    """The cheapest hosts to empty, in order, each planned on the pool the plans before
    it left; a host whose VMs fit nowhere else is passed over. All or nothing."""
    cmd = env.data
    assert isinstance(cmd, MaintainCheapest)
    pool, events, chosen = pool_of(state.ledger), list[Event](), list[str]()
    for cost in cheapest_to_evacuate(pool):
        if len(chosen) == cmd.count:
            break
        try:
            entered, pool = _enter(state, pool, cost.host, str(env.id))
        except SchedulerError:
            continue
        events += entered
        chosen.append(cost.host)
    if len(chosen) < cmd.count:
        return [
            CommandRejected.of(
                env,
                RejectionCode.CANNOT_EVACUATE,
                f"only {len(chosen)} of {cmd.count} hosts can be emptied now",
            )
        ]
    return events


def _enter(state: SchedulerState, pool: Pool, host: str, visit: str) -> tuple[list[Event], Pool]:
    """``MaintenanceStarted`` and the migrations that empty ``host``, and the pool with
    the host empty and in maintenance (``SchedulerError`` when it cannot be emptied)."""
    plan = plan_evacuation(pool, host, rules=every_rule(state.rules))
    rank = next(i for i, cost in enumerate(cheapest_to_evacuate(pool)) if cost.host == host)
    # Each to the host the plan found: the plan placed the host's VMs together, so pairs
    # that must stay together (or apart) do.
    requests = [
        MigrationRequested(
            migration=maintenance_migration(host, visit, move.vm),
            vm=move.vm,
            priority=Owner.HIGH,
            target=move.target,
            reason=MigrationReason.MAINTENANCE,
        )
        for move in plan.moves
    ]
    started = MaintenanceStarted(
        host=host, migrations=[r.migration for r in requests], cost_rank=rank
    )
    return [started, *requests], plan.pool


def sweep(state: SchedulerState) -> list[Event]:
    """Migrations for VMs still on hosts in maintenance with none under way (to where a
    new plan puts them, if one fits), and ``HostEvacuated`` for such hosts that are empty."""
    ledger = state.ledger
    events: list[Event] = []
    rules: dict[str, Rules] | None = None
    for host, since in sorted(ledger.maintenance.items()):
        if host in ledger.failed:
            continue
        vms = [r.reservation for r in ledger.reservations.get(host, {}).values() if r.purpose == VM]
        staying = [vm for vm in vms if ledger.located.get(vm) == host]
        if not staying and host not in ledger.evacuated:
            events.append(HostEvacuated(host=host))
        asks = {
            vm: maintenance_migration(host, str(since), vm)
            for vm in staying
            if vm not in state.moving
        }
        asks = {vm: ident for vm, ident in asks.items() if ident not in state.transfers}
        if not asks:
            continue
        rules = every_rule(state.rules) if rules is None else rules
        try:
            targets = {
                m.vm: m.target for m in plan_evacuation(pool_of(ledger), host, rules=rules).moves
            }
        except SchedulerError:
            targets = {}  # then wherever the rounds find room, or a refusal saying why
        events += [
            MigrationRequested(
                migration=ident,
                vm=vm,
                priority=Owner.HIGH,
                target=targets.get(vm),
                reason=MigrationReason.MAINTENANCE,
            )
            for vm, ident in asks.items()
        ]
    return events
