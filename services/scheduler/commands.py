"""What a scheduler says to a command, pure: accepted into its queue, or a typed refusal
with nothing reserved. Placing happens later, in the rounds."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import astuple

from schemas import Envelope, Event, Message
from schemas.scheduling import (
    ChangeVmSize,
    CopyFile,
    CopyRequested,
    MaintainCheapest,
    MigrateVm,
    MigrationReason,
    MigrationRequested,
    PlacementRequested,
    PlaceVm,
    SetMaintenance,
)
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import MemoryMode
from services.scheduler.choose import request_of
from services.scheduler.core import AbsurdRequest, ContradictoryRules
from services.scheduler.evacuating import decide_cheapest, decide_maintenance
from services.scheduler.holder import Holder
from services.scheduler.ledger import Amounts
from services.scheduler.resizing import change_size
from services.scheduler.scratch import Scratch
from services.scheduler.state import SchedulerState
from shared.outcome import Outcome, answer


class _Refused(Exception):
    def __init__(self, code: RejectionCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def requested_migration(command_id: uuid.UUID) -> str:
    return "mig-" + command_id.hex[:16]


def decide(state: SchedulerState, env: Envelope[Message], name: str) -> list[Event]:  # noqa: PLR0911
    cmd = env.data
    try:
        match cmd:
            case PlaceVm() if cmd.priority == state.priority:
                return [_place(state, cmd)]
            case MigrateVm() if cmd.priority == state.priority:
                return [_migrate(state, cmd, env.id)]
            case CopyFile() if cmd.priority == state.priority:
                return [_copy(state, cmd)]
            case SetMaintenance() if state.priority.value == "high":
                return decide_maintenance(state, env)
            case MaintainCheapest() if state.priority.value == "high":
                return decide_cheapest(state, env)
    except _Refused as refused:
        return [CommandRejected.of(env, refused.code, refused.reason)]
    return [
        CommandRejected.of(env, RejectionCode.WRONG_STATE, f"{name} does not handle {env.type}")
    ]


def decide_outcome(state: SchedulerState, env: Envelope[Message], name: str) -> Outcome:
    """A command's whole answer: its events, and the commands it sends (a resize)."""
    if isinstance(env.data, ChangeVmSize) and env.data.priority == state.priority:
        return change_size(state, env)
    return answer(env, *decide(state, env, name))


def answer_group(holder: Holder, envs: Sequence[Envelope[Message]], name: str) -> list[Outcome]:
    """Each command's answer, decided on the state the answers before it leave (a
    second PlaceVm of one VM in the group is refused, as it would be one after another)."""
    with Scratch(holder) as scratch:
        for env in envs:
            scratch.take(decide_outcome(holder.state, env, name))
    return scratch.outcomes


def _place(state: SchedulerState, cmd: PlaceVm) -> PlacementRequested:
    if cmd.vm in state.known or cmd.vm in state.created:
        raise _Refused(RejectionCode.ALREADY_EXISTS, f"VM {cmd.vm} was already asked for")
    try:
        request = request_of(cmd)
    except ContradictoryRules as err:
        raise _Refused(RejectionCode.CONTRADICTORY_RULES, str(err)) from None
    except AbsurdRequest as err:
        raise _Refused(RejectionCode.INVALID_REQUEST, str(err)) from None
    if cmd.inputs is not None and cmd.memory_mode != MemoryMode.FULL:
        raise _Refused(
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {cmd.vm} has no guest memory to take inputs into: ask for full memory",
        )
    ledger = state.ledger
    rules = cmd.rules
    named = {
        *rules.host_affinity.must,
        *rules.host_affinity.should,
        *rules.host_anti_affinity.must,
        *rules.host_anti_affinity.should,
    }
    unknown = sorted(h for h in named if h not in ledger.capacity)
    if ledger.capacity and unknown:
        raise _Refused(RejectionCode.UNKNOWN_HOST, f"no host {', '.join(unknown)}")
    least = request.minimum or request.desired
    need = Amounts(least.cpu_mhz, least.mem_mib)
    if ledger.capacity and not any(need.fits_in(cap) for cap in ledger.capacity.values()):
        biggest = Amounts(
            *(max(v) for v in zip(*map(astuple, ledger.capacity.values()), strict=True))
        )
        raise _Refused(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"VM {cmd.vm} can never fit: it needs {need.cpu_mhz:.0f} MHz and "
            f"{need.mem_mib:.0f} MiB, the largest host has {biggest.cpu_mhz:.0f} MHz and "
            f"{biggest.mem_mib:.0f} MiB",
        )
    return PlacementRequested(**cmd.model_dump())


def _migrate(state: SchedulerState, cmd: MigrateVm, command_id: uuid.UUID) -> MigrationRequested:
    ledger = state.ledger
    held = ledger.held(cmd.vm)
    if held is None:
        raise _Refused(RejectionCode.UNKNOWN_VM, f"VM {cmd.vm} is not placed")
    request = state.requests.get(cmd.vm)
    if cmd.vm in state.protected or (request is not None and request.data.backup_of):
        raise _Refused(
            RejectionCode.WRONG_STATE,
            f"VM {cmd.vm} is under FT protection: its FT service decides where it runs",
        )
    if cmd.target is not None:
        if cmd.target not in ledger.capacity:
            raise _Refused(RejectionCode.UNKNOWN_HOST, f"no host {cmd.target}")
        if cmd.target == (state.landed(cmd.vm) or held.host):
            raise _Refused(RejectionCode.WRONG_STATE, f"VM {cmd.vm} is already on {cmd.target}")
        if cmd.target in ledger.maintenance:
            raise _Refused(
                RejectionCode.WRONG_STATE, f"host {cmd.target} is in maintenance: it takes no VM"
            )
        if cmd.target in ledger.failed:
            raise _Refused(RejectionCode.WRONG_STATE, f"host {cmd.target} has failed")
    if cmd.vm in state.moving:
        raise _Refused(
            RejectionCode.WRONG_STATE, f"VM {cmd.vm} is already moving ({state.moving[cmd.vm]})"
        )
    return MigrationRequested(
        migration=requested_migration(command_id),
        vm=cmd.vm,
        priority=cmd.priority,
        target=cmd.target,
        reason=MigrationReason.REQUESTED,
        mode=cmd.mode,
        downtime_ms=cmd.downtime_ms,
    )


def _copy(state: SchedulerState, cmd: CopyFile) -> CopyRequested:
    ledger = state.ledger
    if cmd.copy_id in state.transfers:
        raise _Refused(RejectionCode.ALREADY_EXISTS, f"copy {cmd.copy_id} was already asked for")
    for end in (cmd.source, cmd.target):
        if end not in ledger.capacity:
            raise _Refused(RejectionCode.UNKNOWN_HOST, f"no host {end}")
    if cmd.source == cmd.target:
        raise _Refused(RejectionCode.INVALID_REQUEST, "a copy needs two different hosts")
    slowest = min(ledger.capacity[end].net_mbps for end in (cmd.source, cmd.target))
    if cmd.rate_mbps > slowest:
        raise _Refused(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"{cmd.rate_mbps:g} Mbit/s can never fit: an end has {slowest:g} Mbit/s in all",
        )
    return CopyRequested(
        copy_id=cmd.copy_id,
        priority=cmd.priority,
        source=cmd.source,
        target=cmd.target,
        size_mib=cmd.size_mib,
        rate_mbps=cmd.rate_mbps,
    )
