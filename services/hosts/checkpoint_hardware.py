"""Checkpoints as this process's hosts carry them out, once their events are folded: the
stop (a copy-on-write child disk, the device state, the memory marked copy-on-write), the
save in the background, a restore from the file, and the merge when one is deleted.

A save lives in this process only: one whose process stopped before it finished cannot be
finished by the next (the memory of that instant is gone), so the next says it failed.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import structlog

from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointDamaged,
    CheckpointDeleted,
    CheckpointFailed,
    CheckpointStarted,
    VmRestored,
)
from services.hosts.checkpoint_files import (
    CheckpointFileError,
    CheckpointWriter,
    FileCheck,
    checkpoint_path,
    file_problem,
    memory_chunks,
    read_saved,
    relative,
)
from services.hosts.checkpoint_jobs import (
    SAVE_STEP_PAGES,
    DiskCopy,
    SaveJob,
    checksum,
    device_state,
    workload_steps,
)
from services.hosts.checkpoint_records import Checkpoint, CheckpointState
from services.hosts.disks import Disks
from services.hosts.memory import EMPTY_PROFILE, HostMemory
from services.hosts.memory import VmSpec as MemSpec
from services.hosts.memory.geometry import Ints
from services.hosts.memory.transfer import PageBatch
from services.hosts.state import Fleet, Vm
from services.hosts.storage.datastore import StorageError
from shared.metrics import CHECKPOINT_SAVE, CHECKPOINT_STUN, CHECKPOINTS_ENDED

log = structlog.get_logger("vplane.hosts.checkpoints")

LOAD_CHUNK_PAGES = 16_384


class CheckpointHardware:
    def __init__(self, disks: Disks, memory: dict[str, HostMemory], steps: dict[str, int]) -> None:
        self.disks = disks
        self.memory = memory
        # The guests' memory workload positions (the machine's), part of a device state.
        self.steps = steps
        self.saves: dict[str, SaveJob] = {}
        # Pages a save writes a step (a test makes it small, so the guest writes between).
        self.step_pages = SAVE_STEP_PAGES
        # Saves that cannot finish, with why: their CheckpointFailed is still to be told.
        self.failed: dict[str, str] = {}
        # Complete checkpoints read back after a restart, a piece a step.
        self.checks: dict[str, FileCheck] = {}

    def started(self, event: CheckpointStarted, mem: HostMemory, live: bool) -> None:
        """``live``: folded as it happens, not again while the process rebuilds."""
        if not live:
            # The VM writes the child already, and the save of that instant died with the
            # process that ran it (a later event may say it finished all the same).
            self.disks.attach(
                event.vm, event.disk_gib, event.template, event.seed, event.child_disk
            )
            self.failed[event.checkpoint] = "its hosts process stopped before the save finished"
            return
        try:
            self._stop(event, mem)
        except (StorageError, CheckpointFileError, OSError) as err:
            # The datastore filled since the decision, or failed: no checkpoint, and the
            # VM goes on as it was.
            log.warning("a checkpoint could not start", checkpoint=event.checkpoint, error=str(err))
            self.failed[event.checkpoint] = f"it could not start: {err}"
            if self.disks.exists(event.child_disk):
                # As the log has it: the VM writes the child from the stop on.
                self.disks.attach(
                    event.vm, event.disk_gib, event.template, event.seed, event.child_disk
                )

    def _stop(self, event: CheckpointStarted, mem: HostMemory) -> None:
        # While the VM still runs: its disk's copy-on-write child (and, to copy the disk,
        # the copy), and the file opened.
        parent = self.disks.disk(event.vm)
        child = parent.child(event.child_disk)
        disk_copy = None
        if event.copy_parent:
            target = self.disks.datastore().create_disk(replace(parent.spec, name=copy_of(event)))
            disk_copy = DiskCopy(parent, target, parent.written_in_chain())
        pages = mem.spec(event.vm).pages
        header = {"vm": event.vm, "checkpoint": event.checkpoint, "disk": event.disk}
        writer = CheckpointWriter(self.disks.datastore(), event.checkpoint, header, pages)
        # The stop: the device state noted, the guest's writes sent to the child, its
        # memory marked copy-on-write (the job below, which sees every write from now on).
        stopped = time.perf_counter()
        device = device_state(event.seed, self.steps.get(event.vm, 0), self.disks.step_of(event.vm))
        self.disks.switch(event.vm, child)
        stun_ms = (time.perf_counter() - stopped) * 1000
        writer.write_device(device)
        self.saves[event.checkpoint] = SaveJob(
            checkpoint=event.checkpoint,
            vm=event.vm,
            host=event.host,
            pages=pages,
            writer=writer,
            stun_ms=stun_ms,
            device_checksum=checksum(device),
            disk_copy=disk_copy,
        )

    def check_files(self, fleet: Fleet, hosts: list[str]) -> None:
        """Once rebuilt: read back the files of the complete checkpoints of these hosts, so
        that one that no longer reads as written is told, not found at a restore."""
        if self.disks.root is None:
            return
        store = self.disks.datastore()
        for name, saved in fleet.checkpoints.items():
            if saved.host in hosts and saved.state == CheckpointState.COMPLETE:
                self.checks[name] = FileCheck(store, name, saved.checksum)

    def abort_for(self, vm: str, reason: str) -> None:
        """``vm``'s memory is made again (its host crashed, it was resized): the memory of
        the stop is gone, and its save with it."""
        for name, job in list(self.saves.items()):
            if job.vm == vm and job.written is None:
                job.abort()
                del self.saves[name]
                self.failed[name] = reason

    def before_write(self, vm: str, mem: HostMemory, pages: Ints) -> None:
        for job in self.saves.values():
            if job.vm == vm:
                job.before_write(mem, pages)

    def step(
        self, fleet: Fleet
    ) -> list[CheckpointCompleted | CheckpointFailed | CheckpointDamaged]:
        """Save a piece of each checkpoint in progress, read back a piece of each file being
        checked; the events of those that ended."""
        out: list[CheckpointCompleted | CheckpointFailed | CheckpointDamaged] = []
        for name, check in list(self.checks.items()):
            found = check.step()
            if found is False:
                continue
            del self.checks[name]
            saved = fleet.checkpoints.get(name)
            if isinstance(found, str) and saved and saved.state == CheckpointState.COMPLETE:
                log.warning("a checkpoint's file is damaged", checkpoint=name, reason=found)
                out.append(
                    CheckpointDamaged(vm=saved.vm, host=saved.host, checkpoint=name, reason=found)
                )
        store = self.disks.datastore() if self.saves else None
        for name, job in list(self.saves.items()):
            mem = self.memory.get(job.host)
            if mem is None or job.vm not in mem.vms:
                job.abort()
                del self.saves[name]
                self.failed[name] = f"VM {job.vm} left its host before the save finished"
                continue
            if not job.step(mem, self.step_pages):
                continue
            assert job.written is not None
            assert store is not None
            out.append(
                CheckpointCompleted(
                    vm=job.vm,
                    host=job.host,
                    checkpoint=name,
                    file=relative(
                        self.disks.datastore(), checkpoint_path(self.disks.datastore(), name)
                    ),
                    bytes=job.written.bytes,
                    checksum=job.written.checksum,
                    memory_checksum=job.written.memory_checksum,
                    device_checksum=job.device_checksum,
                    stun_ms=round(job.stun_ms, 3),
                    save_seconds=round(job.save_seconds, 3),
                    pages_copied_aside=job.copied_aside,
                    disk=job.disk_copy.target.name if job.disk_copy else None,
                    vm_disk=job.disk_copy.source.name if job.disk_copy else None,
                    disk_blocks_copied=job.disk_copy.copied if job.disk_copy else 0,
                )
            )
        for name, reason in list(self.failed.items()):
            saved = fleet.checkpoints.get(name)
            if saved is None or saved.state != CheckpointState.SAVING:
                del self.failed[name]
                continue
            out.append(
                CheckpointFailed(vm=saved.vm, host=saved.host, checkpoint=name, reason=reason)
            )
        for event in out:
            _count(event)
        return out

    def ended(self, before: Fleet, event: CheckpointCompleted | CheckpointFailed) -> None:
        """Its CheckpointCompleted or CheckpointFailed is in the log (``before`` is the fold
        before it): what it leaves behind is cleared, or its VM's disk merged back."""
        job = self.saves.pop(event.checkpoint, None)
        if job is not None and job.written is None:
            job.abort()
        self.failed.pop(event.checkpoint, None)
        saved, vm = before.checkpoints.get(event.checkpoint), before.vms.get(event.vm)
        if saved is None or saved.host not in self.memory:
            return
        if isinstance(event, CheckpointFailed):
            self._clear(event.checkpoint, saved)
        elif event.vm_disk is not None and vm is not None and vm.host in self.memory:
            self._merge_back(vm, saved.child_disk, event.vm_disk)

    def _clear(self, checkpoint: str, saved: Checkpoint) -> None:
        """What a save that did not finish left: its file, under either name, and the
        copy of the disk it was making."""
        store = self.disks.datastore()
        path = checkpoint_path(store, checkpoint)
        path.unlink(missing_ok=True)
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
        if saved.copy_parent and store.has(copy_of(saved)):
            store.open_disk(copy_of(saved)).delete()

    def _merge_back(self, vm: Vm, child: str, own: str) -> None:
        if vm.active_disk == child and self.disks.exists(child):
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, child)
            self.disks.merge_back(vm.name)
        else:
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, own)

    def restored(self, before: Fleet, event: VmRestored, mem: HostMemory) -> None:
        vm = before.vms[event.vm]
        self.load(before.checkpoints[event.checkpoint], vm.name, event.disk, mem)

    def load(self, saved: Checkpoint, vm: str, disk: str, mem: HostMemory) -> None:
        """``vm`` (of the checkpoint's size, on ``mem``'s host) as at the checkpoint: its
        memory and device state from the file, ``disk`` a child of the checkpoint's disk."""
        state = read_saved(self.disks.datastore(), saved.name)
        spec = mem.spec(vm)
        mem.destroy_vm(vm)
        mem.create_vm(
            MemSpec(
                name=spec.name,
                large_pages=spec.large_pages,
                seed=spec.seed,
                template=spec.template,
                mode=spec.mode,
                profile=EMPTY_PROFILE,
            )
        )
        for first, rows in memory_chunks(state, LOAD_CHUNK_PAGES):
            pages = np.arange(first, first + len(rows), dtype=np.int64)
            mem.import_pages(vm, PageBatch.of(state.pages, pages, rows))
        memory_step, disk_step = workload_steps(state.device)
        self.steps[vm] = memory_step
        self.disks.set_step(vm, disk_step)
        if self.disks.exists(disk):
            self.disks.attach(vm, saved.disk_gib, saved.template, saved.seed, disk)
        else:
            self.disks.branch(vm, saved.disk, disk)

    def deleted(self, before: Fleet, event: CheckpointDeleted) -> None:
        saved = before.checkpoints[event.checkpoint]
        vm = before.vms.get(event.vm)
        if (
            vm is not None
            and vm.active_disk == saved.child_disk
            and self.disks.exists(saved.child_disk)
        ):
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, saved.child_disk)
            self.disks.merge_back(vm.name)
        elif vm is not None:
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, event.disk)
        store = self.disks.datastore()
        checkpoint_path(store, event.checkpoint).unlink(missing_ok=True)
        if saved.copied and store.has(saved.disk):
            store.open_disk(saved.disk).delete()

    def problem(self, fleet: Fleet, checkpoint: str) -> str | None:
        saved = fleet.checkpoints.get(checkpoint)
        if saved is None or self.disks.root is None:
            return None
        return file_problem(self.disks.datastore(), checkpoint, saved.checksum)


def _count(event: CheckpointCompleted | CheckpointFailed | CheckpointDamaged) -> None:
    match event:
        case CheckpointCompleted():
            CHECKPOINT_STUN.labels(event.host).observe(event.stun_ms / 1000)
            CHECKPOINT_SAVE.labels(event.host).observe(event.save_seconds)
            outcome = "complete"
        case CheckpointFailed():
            outcome = "failed"
        case CheckpointDamaged():
            outcome = "damaged"
    CHECKPOINTS_ENDED.labels(event.host, outcome).inc()


def copy_of(checkpoint: CheckpointStarted | Checkpoint) -> str:
    """The name of a checkpoint's own copy of its VM's disk (no VM's disk has "..")."""
    name = checkpoint.checkpoint if isinstance(checkpoint, CheckpointStarted) else checkpoint.name
    return f"{name}..copy"
