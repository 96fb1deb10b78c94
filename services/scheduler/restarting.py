"""HA restarts: each scheduler restarts its own VMs of a silent host on the hosts left,
the high one first (it may use the HA spare, which exists for this), the low one where
room is left. A restart moves the VM's reservation in one step: reserved on its new host,
released on the failed one."""

from __future__ import annotations

from schemas.ft import TakeOverVm
from schemas.ha import RestartVm, VmRestartFailed
from schemas.pool import CapacityReleased, CapacityReserved, Owner
from services.scheduler.choose import choose
from services.scheduler.holder import Holder
from services.scheduler.placing import reserving
from services.scheduler.state import SchedulerState
from shared.outcome import Outcome


def to_restart(holder: Holder) -> list[str]:
    """This scheduler's VMs on a silent host whose reservation is not on a usable host
    (there, a restart is on its way), largest first. A restart its target refused (the
    target failed meanwhile) leaves the reservation on a failed host: it is tried again."""
    state = holder.state
    ledger = state.ledger
    if not state.silent:
        return []
    vms = [
        vm
        for vm in state.placed
        if state.hosted.get(vm) in state.silent
        and (held := ledger.located.get(vm)) is not None
        and not ledger.usable(held)
        and not _under_ft(state, vm)
    ]
    return sorted(vms, key=lambda vm: (-state.placed[vm].mem_mib, vm))


def _under_ft(state: SchedulerState, vm: str) -> bool:
    """A protected VM fails over to its backup (its FT service asks); a backup is made
    again by its FT service, elsewhere."""
    request = state.requests.get(vm)
    return vm in state.protected or (request is not None and request.data.backup_of is not None)


def failover(holder: Holder, vm: str) -> Outcome | None:
    """A protected VM's reservation moves onto its backup's host, in place of the
    backup's; then that host makes the backup the VM."""
    state = holder.state
    asked = state.failovers[vm]
    event = asked.data
    ledger = state.ledger
    held, backup_held = ledger.held(vm), ledger.held(event.backup)
    if held is None or backup_held is None or backup_held.host != event.backup_host:
        return None
    moved = CapacityReserved(
        host=event.backup_host,
        reservation=vm,
        workload=vm,
        owner=state.priority,
        cpu_mhz=held.cpu_mhz,
        mem_mib=held.mem_mib,
        replaces=event.backup,
    )
    take_over = TakeOverVm(
        host=event.backup_host, vm=vm, backup=event.backup, from_host=event.from_host
    )
    return Outcome(
        events=[CapacityReleased(host=held.host, reservation=vm), moved],
        commands=[take_over],
        cause=asked,
        key=f"failover:{vm}:{event.backup}",
        expect=reserving(ledger, moved),
    )


def restart(holder: Holder, vm: str) -> Outcome | None:
    """The VM's restart on a host with room, or (once per failure) why it cannot be."""
    state = holder.state
    ledger, request = state.ledger, state.requests.get(vm)
    held, failed_host = ledger.held(vm), state.hosted[vm]
    if held is None or request is None:
        return None
    failure = state.silent[failed_host]
    # The spare is held back for exactly this: the high scheduler may use all of it.
    spare = 0 if state.priority is Owner.HIGH else holder.knobs.ha_failures
    choice = choose(ledger, request.data, state.priority, spare, holder.pools, state.rules)
    if choice is None:
        if vm in state.unrestarted:
            return None
        refused = VmRestartFailed(
            vm=vm,
            host=failed_host,
            priority=state.priority.value,
            reason=f"no host has room for {vm} ({request.data.cpu} vCPU, "
            f"{request.data.mem_mib} MiB) with {failed_host} down",
        )
        return Outcome(events=[refused], cause=failure, key=f"unrestarted:{vm}")
    moved = choice.reservation
    command = RestartVm(
        host=moved.host,
        vm=vm,
        from_host=failed_host,
        cpu=choice.cpu,
        mem_mib=choice.mem_mib,
        failed_at=failure.occurred_at,
    )
    return Outcome(
        # Released first: nothing can take room on a host that is down.
        events=[CapacityReleased(host=held.host, reservation=vm), moved],
        commands=[command],
        cause=failure,
        key=f"restart:{vm}:{held.host}",
        expect=reserving(ledger, moved),
    )
