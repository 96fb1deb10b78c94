"""Forks as the daemon asks for them: checked against what it knows of the parent and the
names, then placed by the parent's scheduler on the parent's host (``fork_of`` pins the
placement there, not the VM: a fork may move later)."""

from __future__ import annotations

from dataclasses import replace

from schemas import Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import PlaceVm
from schemas.service import CommandRejected, RejectionCode
from schemas.sharing import ForkVm, VmForkRequested
from services.sharing.state import Sharing
from shared.outcome import Outcome, answer


def fork(state: Sharing, env: Envelope[Message]) -> Outcome:
    cmd = env.data
    assert isinstance(cmd, ForkVm)
    parent = state.vms.get(cmd.parent)
    if parent is None:
        refused = _refuse(env, RejectionCode.UNKNOWN_VM, f"no VM {cmd.parent} to fork")
        # The parent may be in the log and not folded yet: fold it and decide again.
        return replace(refused, stale=("vm.>",))
    if not parent.full:
        return _refuse(
            env,
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {cmd.parent} has no guest memory bytes for a fork to map "
            "(fork a VM made with --memory full)",
        )
    taken = [c for c in cmd.children if c in state.vms or c in state.pending]
    if taken:
        return _refuse(env, RejectionCode.ALREADY_EXISTS, f"VM {taken[0]} exists already")
    made = parent.created
    places = [
        PlaceVm(
            vm=child,
            priority=Owner(made.priority),
            cpu=made.cpu,
            mem_mib=made.mem_mib,
            memory_mode=made.memory_mode,
            workload=made.workload,
            seed=made.seed,
            template=made.template,
            disk_gib=max(1, made.disk_gib),
            writes=made.writes,
            power_on=cmd.power_on,
            fork_of=parent.name,
        )
        for child in cmd.children
    ]
    requested = VmForkRequested(parent=parent.name, host=parent.host, children=cmd.children)
    return answer(env, requested, commands=places)


def _refuse(env: Envelope[Message], code: RejectionCode, reason: str) -> Outcome:
    return answer(env, CommandRejected.of(env, code, reason))
