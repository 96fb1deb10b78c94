"""Checkpoints as the hosts decide them: which VM may be checkpointed, restored or have a
checkpoint deleted, and what that changes (pure; the machine does the I/O once the
events are folded)."""

from __future__ import annotations

from collections.abc import Callable

from schemas.checkpoints import (
    CheckpointDeleted,
    CheckpointStarted,
    CheckpointVm,
    DeleteCheckpoint,
    RestoreVm,
    VmRestored,
)
from schemas.service import RejectionCode
from schemas.vm import MemoryMode, VmCreated, VmState
from services.hosts.checkpoint_files import checkpoint_bytes
from services.hosts.checkpoint_records import Checkpoint, CheckpointState
from services.hosts.checks import Rejected, full_vm_on, host_up, not_migrating
from services.hosts.state import Fleet, Vm


def checkpoint(
    fleet: Fleet, cmd: CheckpointVm, datastore_problem: Callable[[int, str], str | None]
) -> CheckpointStarted:
    host_up(fleet, cmd.host)
    vm = _with_disk(full_vm_on(fleet, cmd.vm, cmd.host))
    if vm.state != VmState.ON or vm.stunned:
        raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is {vm.state}, not running")
    not_migrating(fleet, vm)
    if cmd.checkpoint in fleet.checkpoints:
        raise Rejected(RejectionCode.ALREADY_EXISTS, f"a checkpoint {cmd.checkpoint} exists")
    saving = _saving(fleet, vm.name)
    if saving is not None:
        raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is saving {saving.name}")
    need = checkpoint_bytes(vm.mem_mib)
    if (full := datastore_problem(need, f"checkpoint {cmd.checkpoint}")) is not None:
        raise Rejected(RejectionCode.DATASTORE_FULL, full)
    return CheckpointStarted(
        vm=vm.name,
        host=vm.host,
        checkpoint=cmd.checkpoint,
        disk=vm.active_disk,
        child_disk=f"{vm.name}.{cmd.checkpoint}",
        cpu=vm.cpu,
        mem_mib=vm.mem_mib,
        disk_gib=vm.disk_gib,
        template=vm.template,
        seed=vm.seed,
        copy_parent=cmd.copy_parent,
    )


def restore(fleet: Fleet, cmd: RestoreVm, file_problem: str | None) -> VmRestored:
    """``file_problem``: what is wrong with the checkpoint's file, read back now."""
    host_up(fleet, cmd.host)
    vm = _with_disk(full_vm_on(fleet, cmd.vm, cmd.host))
    saved = _complete(fleet, cmd.checkpoint)
    _same_size(saved, vm.name, vm.cpu, vm.mem_mib, vm.disk_gib)
    if vm.state != VmState.OFF:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"VM {vm.name} is {vm.state}: power it off to restore it"
        )
    if (saving := _saving(fleet, vm.name)) is not None:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"VM {vm.name} is saving {saving.name}: restore after"
        )
    not_migrating(fleet, vm)
    if file_problem is not None:
        raise Rejected(RejectionCode.CHECKPOINT_CORRUPT, file_problem)
    assert saved.memory_checksum is not None
    return VmRestored(
        vm=vm.name,
        host=vm.host,
        checkpoint=saved.name,
        disk=f"{vm.name}.r{fleet.restores + 1}",
        memory_checksum=saved.memory_checksum,
    )


def created_from(fleet: Fleet, created: VmCreated, file_problem: str | None) -> VmCreated:
    """A new VM made from a checkpoint of its size: its template and seed are the
    checkpoint's (its disk is a child of the checkpoint's, made of the same blocks)."""
    assert created.checkpoint is not None
    saved = _complete(fleet, created.checkpoint)
    if created.memory_mode != MemoryMode.FULL:
        raise Rejected(
            RejectionCode.ACCOUNTING_ONLY, f"a VM made from {saved.name} has full memory"
        )
    _same_size(saved, created.vm, created.cpu, created.mem_mib, created.disk_gib)
    if file_problem is not None:
        raise Rejected(RejectionCode.CHECKPOINT_CORRUPT, file_problem)
    return created.model_copy(update={"template": saved.template, "seed": saved.seed})


def delete(fleet: Fleet, cmd: DeleteCheckpoint) -> CheckpointDeleted:
    """The checkpoint's disk goes too: its VM's disk, made from it, is merged back into it.
    Refused while another disk is made from it (a newer checkpoint, a restore)."""
    host_up(fleet, cmd.host)
    saved = _checkpoint(fleet, cmd.checkpoint)
    if saved.state == CheckpointState.SAVING:
        raise Rejected(RejectionCode.WRONG_STATE, f"checkpoint {saved.name} is still saving")
    vm = fleet.vms.get(saved.vm)
    if vm is None or vm.host != cmd.host:
        raise Rejected(RejectionCode.UNKNOWN_VM, f"the VM of {saved.name} is not on {cmd.host}")
    if saved.copied:
        # Its disk is its own copy: it goes unless a disk is made from it.
        if made := fleet.disk_children(saved.disk):
            raise _made_from(saved, made)
        return CheckpointDeleted(
            vm=vm.name, host=vm.host, checkpoint=saved.name, disk=vm.active_disk
        )
    others = [d for d in fleet.disk_children(saved.disk) if d != vm.active_disk]
    if vm.active_disk != saved.child_disk or others:
        made = sorted({*others, vm.active_disk} - {saved.child_disk}) or [vm.active_disk]
        raise _made_from(saved, made)
    not_migrating(fleet, vm)
    return CheckpointDeleted(vm=vm.name, host=vm.host, checkpoint=saved.name, disk=saved.disk)


def _made_from(saved: Checkpoint, made: list[str]) -> Rejected:
    return Rejected(
        RejectionCode.WRONG_STATE,
        f"disk {saved.disk} of {saved.name} has other disks made from it "
        f"({', '.join(made)}): delete those first",
    )


def _with_disk(vm: Vm) -> Vm:
    if vm.disk_gib < 1:
        raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} has no disk")
    return vm


def _complete(fleet: Fleet, name: str) -> Checkpoint:
    saved = _checkpoint(fleet, name)
    if saved.state != CheckpointState.COMPLETE:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"checkpoint {saved.name} is {saved.state}, not complete"
        )
    return saved


def _same_size(saved: Checkpoint, vm: str, cpu: int, mem_mib: int, disk_gib: int) -> None:
    if (cpu, mem_mib, disk_gib) != (saved.cpu, saved.mem_mib, saved.disk_gib):
        raise Rejected(
            RejectionCode.SIZE_MISMATCH,
            f"checkpoint {saved.name} is of a VM of {saved.cpu} vCPUs, {saved.mem_mib} MiB and "
            f"a {saved.disk_gib} GiB disk; {vm} has {cpu}, {mem_mib} and {disk_gib}",
        )


def _checkpoint(fleet: Fleet, name: str) -> Checkpoint:
    saved = fleet.checkpoints.get(name)
    if saved is None:
        raise Rejected(RejectionCode.UNKNOWN_CHECKPOINT, f"no checkpoint {name}")
    return saved


def _saving(fleet: Fleet, vm: str) -> Checkpoint | None:
    return next(
        (c for c in fleet.checkpoints.values() if c.vm == vm and c.state == CheckpointState.SAVING),
        None,
    )
