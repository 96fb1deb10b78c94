"""Forks on a host: a child made of its template's pages, and what a template refuses.

The first fork of a VM quiesces it into a template (``VmTemplated``, with the checksum its
children start with): it does no more work and nothing writes its memory, because every
child maps its frames. Later forks of it only add children.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas import Event, Message
from schemas.checkpoints import RestoreVm
from schemas.service import RejectionCode
from schemas.sharing import VmTemplated
from schemas.transfers import StartMigration
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOnVm,
    ResizeVm,
    ResumeVm,
    StunVm,
    ThrottleVm,
)
from services.hosts.checks import Rejected, not_migrating
from services.hosts.state import Fleet, Vm


def templating(
    fleet: Fleet,
    cmd: CreateVm,
    checksum: Callable[[str], str | None],
    fork_problem: Callable[[str], str | None],
) -> list[Event]:
    """What a fork of ``cmd.fork_of`` needs first: the parent made a template (if it is
    not one yet); refused when the parent cannot be forked onto ``cmd.host``."""
    assert cmd.fork_of is not None
    parent = fleet.vms.get(cmd.fork_of)
    if parent is None:
        raise Rejected(RejectionCode.UNKNOWN_VM, f"no VM {cmd.fork_of} to fork {cmd.vm} from")
    if cmd.checkpoint is not None:
        raise Rejected(
            RejectionCode.INVALID_REQUEST, f"{cmd.vm} is a fork or made from a checkpoint, not both"
        )
    if parent.host != cmd.host:
        raise Rejected(
            RejectionCode.WRONG_STATE,
            f"{parent.name} is on {parent.host}: its forks go there, not on {cmd.host}",
        )
    if parent.memory_mode != MemoryMode.FULL:
        raise Rejected(
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {parent.name} has no guest memory bytes for a fork to map",
        )
    not_migrating(fleet, parent)
    if parent.stunned:
        raise Rejected(
            RejectionCode.WRONG_STATE,
            f"VM {parent.name} cannot be quiesced: it is stunned (a save or a switchover)",
        )
    if (cmd.cpu, cmd.mem_mib) != (parent.cpu, parent.mem_mib):
        raise Rejected(
            RejectionCode.SIZE_MISMATCH,
            f"a fork of {parent.name} has its size ({parent.cpu} vCPUs, {parent.mem_mib} MiB), "
            f"not {cmd.cpu} vCPUs and {cmd.mem_mib} MiB",
        )
    if (problem := fork_problem(parent.name)) is not None:
        raise Rejected(RejectionCode.WRONG_STATE, f"VM {parent.name} cannot be forked: {problem}")
    if parent.templated:
        return []
    sum_ = checksum(parent.name)
    assert sum_ is not None  # a full-memory guest on one of this process's hosts
    return [VmTemplated(host=parent.host, vm=parent.name, checksum=sum_)]


def refuse_on_template(fleet: Fleet, vm: Vm, cmd: Message) -> None:
    """A template stays quiesced and read-only; it goes only once no child maps it."""
    if not vm.templated:
        return
    children = fleet.children_of(vm.name)
    match cmd:
        case DestroyVm() | StartMigration() if children:
            shown = ", ".join(children[:5]) + (", ..." if len(children) > 5 else "")
            raise Rejected(
                RejectionCode.WRONG_STATE,
                f"VM {vm.name} is the template of {len(children)} living fork(s) ({shown}): "
                "destroy them first",
            )
        case PowerOnVm() | ResumeVm() | ResizeVm() | StunVm() | ThrottleVm() | RestoreVm():
            raise Rejected(
                RejectionCode.WRONG_STATE,
                f"VM {vm.name} is a template: quiesced and read-only, the base of its forks",
            )
