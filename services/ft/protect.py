"""ProtectVm as the FT service decides it: checked against what it knows of the VM, its
host and the backup host asked for; a pair begins with its backup's name."""

from __future__ import annotations

from dataclasses import replace

from schemas import Envelope, Message
from schemas.ft import (
    DivergeBackup,
    DivergenceInjected,
    FtMode,
    ProtectionRequested,
    ProtectVm,
    UnprotectRequested,
    UnprotectVm,
)
from schemas.memory import FlipGuestBytes
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import MemoryMode
from services.ft.state import Ft, Known, Phase
from shared.outcome import Outcome, answer

# Where a backup's bytes are flipped to make it diverge: its execution state's digest
# (services/hosts/memory/execution.py: magic, inputs received, outputs sent, digest),
# which every answer it sends is computed from.
STATE_PAGE = 0
DIGEST_OFFSET = 24

# The modes this service carries out so far.
AVAILABLE = (FtMode.RECORD_REPLAY, FtMode.CHECKPOINT, FtMode.LOCKSTEP)


def protect(state: Ft, env: Envelope[Message]) -> Outcome:
    cmd = env.data
    assert isinstance(cmd, ProtectVm)
    known = state.vms.get(cmd.vm)
    if known is None:
        refused = _refuse(env, RejectionCode.UNKNOWN_VM, f"no VM {cmd.vm} to protect")
        # It may be in the log and not folded yet: fold it and decide again.
        return replace(refused, stale=("vm.>",))
    problem = _problem(state, cmd, known)
    if problem is not None:
        return _refuse(env, *problem)
    requested = ProtectionRequested(
        vm=cmd.vm,
        mode=cmd.mode,
        primary_host=known.host,
        backup=backup_name(state, cmd.vm),
        backup_host=cmd.backup_host,
        epoch_ms=cmd.epoch_ms,
    )
    return answer(env, requested)


def _problem(state: Ft, cmd: ProtectVm, known: Known) -> tuple[RejectionCode, str] | None:
    """Why ``cmd`` cannot be done, the first reason found; None when it can."""
    made, backup_host = known.created, cmd.backup_host
    checks = (
        (
            made.memory_mode != MemoryMode.FULL,
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {cmd.vm} has no guest memory to copy or replay (create it with --memory full)",
        ),
        (
            made.backup_of is not None,
            RejectionCode.INVALID_REQUEST,
            f"VM {cmd.vm} is a backup itself",
        ),
        (
            cmd.mode not in AVAILABLE,
            RejectionCode.INVALID_REQUEST,
            f"mode {cmd.mode} is not available yet: use " + ", ".join(m.value for m in AVAILABLE),
        ),
        (
            made.inputs is None,
            RejectionCode.INVALID_REQUEST,
            f"VM {cmd.vm} takes no inputs from outside: its execution cannot be recorded "
            "(create it with --packets)",
        ),
        (
            cmd.vm in state.pairs,
            RejectionCode.ALREADY_EXISTS,
            f"VM {cmd.vm} is protected already",
        ),
        (not known.on, RejectionCode.WRONG_STATE, f"VM {cmd.vm} is not running"),
        (
            backup_host == known.host,
            RejectionCode.INVALID_REQUEST,
            f"the backup must not share {cmd.vm}'s host {known.host}",
        ),
        (
            backup_host is not None and backup_host not in state.hosts,
            RejectionCode.UNKNOWN_HOST,
            f"no host {backup_host}",
        ),
        (
            backup_host is not None and state.hosts.get(backup_host) is False,
            RejectionCode.HOST_DOWN,
            f"host {backup_host} is down",
        ),
    )
    return next(((code, why) for bad, code, why in checks if bad), None)


def backup_name(state: Ft, vm: str) -> str:
    """``<vm>-ft<n>``: its n-th backup, of a name no VM has (within a name's 63 bytes)."""
    generation = state.generations.get(vm, 0) + 1
    while True:
        suffix = f"-ft{generation}"
        name = vm[: 63 - len(suffix)] + suffix
        if name not in state.vms:
            return name
        generation += 1


def _refuse(env: Envelope[Message], code: RejectionCode, reason: str) -> Outcome:
    return answer(env, CommandRejected.of(env, code, reason))


# Phases a pair cannot be ended in: its VM is moving onto its backup.
FAILING = (Phase.FAILING_OVER, Phase.TAKING_OVER, Phase.TAKEN_OVER)


def unprotect(state: Ft, env: Envelope[Message]) -> Outcome:
    """End a protection: once the primary's run in flight is logged, what the backup had
    not confirmed of the VM's outputs leaves, a suspended VM resumes, and the backup
    goes (``steps``)."""
    cmd = env.data
    assert isinstance(cmd, UnprotectVm)
    p = state.pairs.get(cmd.vm)
    if p is None:
        return _refuse(env, RejectionCode.UNKNOWN_VM, f"VM {cmd.vm} is not protected")
    if p.phase in FAILING:
        why = f"VM {cmd.vm} is failing over to {p.backup}: unprotect it once it has"
        return _refuse(env, RejectionCode.WRONG_STATE, why)
    if p.unprotecting is not None:
        return _refuse(env, RejectionCode.WRONG_STATE, f"VM {cmd.vm}'s protection is ending")
    return answer(env, UnprotectRequested(vm=cmd.vm, backup=p.backup))


def diverge(state: Ft, env: Envelope[Message]) -> Outcome:
    """Flip bytes of the backup's execution state: it says otherwise from its next output."""
    cmd = env.data
    assert isinstance(cmd, DivergeBackup)
    p = state.pairs.get(cmd.vm)
    if p is None:
        return _refuse(env, RejectionCode.UNKNOWN_VM, f"VM {cmd.vm} is not protected")
    if p.phase is not Phase.PROTECTED or p.backup_host is None:
        return _refuse(
            env, RejectionCode.WRONG_STATE, f"VM {cmd.vm}'s backup is not in step ({p.phase})"
        )
    where = {"page": STATE_PAGE, "offset": DIGEST_OFFSET, "count": 4}
    injected = DivergenceInjected(vm=p.vm, backup=p.backup, backup_host=p.backup_host, **where)
    flip = FlipGuestBytes(host=p.backup_host, vm=p.backup, **where)
    return answer(env, injected, commands=[flip])
