"""HA restarts: each scheduler restarts its own VMs of a silent host on the hosts left,
the high one first (it may use the HA spare, which exists for this), the low one where
room is left. A restart moves the VM's reservation in one step: reserved on its new host,
released on the failed one."""

from __future__ import annotations

from schemas.ha import RestartVm, VmRestartFailed
from schemas.pool import CapacityReleased, Owner
from services.scheduler.choose import choose
from services.scheduler.holder import Holder
from services.scheduler.placing import reserving
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
    ]
    return sorted(vms, key=lambda vm: (-state.placed[vm].mem_mib, vm))


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
