"""The emulated hardware of this process's hosts: guest memory, scratch disks and resource
contention.

It follows the fold (``apply`` runs for every event, while rebuilding and live) and
answers what deciding needs to know (``facts``). Guest memory is the hardware's own
state, not a projection of the log: after a restart it is regenerated from each VM's
seed and the page events in the log (sharing), as a host's RAM is after a reboot.
Scratch bytes are temporary data and are not regenerated: a restart rebuilds the pools'
allocations from the log, and their space reads as zeros, as a fresh tmpfs does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from functools import partial

import numpy as np
import structlog

from schemas import Message
from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointDeleted,
    CheckpointFailed,
    CheckpointStarted,
    VmRestored,
)
from schemas.ft import VmFailedOver
from schemas.ha import VmRestarted
from schemas.host import (
    GuestMemoryDiverged,
    HostCrashed,
    HostRegistered,
    HostState,
    HostTelemetry,
)
from schemas.memory import (
    MAX_DEMAND,
    GuestBytesFlipped,
    PagePair,
    PagesShared,
    PagesSwappedIn,
    PagesSwappedOut,
    PagesUnshared,
    RunSteps,
    RunVm,
    SharePages,
    SwapInPages,
    SwapOutPages,
    VmRan,
)
from schemas.numa import VmNumaMoveCompleted, VmNumaMoveStarted
from schemas.scratch import ScratchReleased
from schemas.service import RejectionCode
from schemas.sharing import VmTemplated
from schemas.transfers import MigrationAborted, MigrationCompleted, MigrationStarted
from schemas.vm import MemoryMode, VmCreated, VmDestroyed, VmResized
from services.hosts import page_sharing
from services.hosts.checkpoint_files import CheckpointFileError
from services.hosts.checkpoint_hardware import CheckpointHardware
from services.hosts.disks import Disks
from services.hosts.domain import Facts
from services.hosts.epoch_pages import EpochPages
from services.hosts.executing import RecordedGuests, by_step
from services.hosts.memory import EMPTY_PROFILE, BytesDiffer, HostMemory, MemoryModelError
from services.hosts.memory import MemoryMode as MemMode
from services.hosts.memory import VmSpec as MemSpec
from services.hosts.memory import Workload as MemWorkload
from services.hosts.memory.geometry import LARGE_PAGE_MIB, PAGE_MIB
from services.hosts.memory.workload import Accesses
from services.hosts.migrating import Incoming, Outgoing
from services.hosts.numa_hardware import NumaHardware
from services.hosts.page_cache import PageCaches
from services.hosts.page_sharing import SharedReads
from services.hosts.scratch import ScratchDisk
from services.hosts.state import Fleet, Vm
from services.hosts.storage.datastore import StorageError
from services.hosts.telemetry import Contention, samples

log = structlog.get_logger("vplane.hosts")

# Page writes and reads a running full-memory guest makes per tick at full speed.
WRITES_PER_TICK = 256
READS_PER_TICK = 1024


def large_pages(mem_mib: int) -> int:
    return max(1, math.ceil(mem_mib / LARGE_PAGE_MIB))


class Machine:
    def __init__(
        self, hosts: list[str], disks: Disks | None = None, tick_seconds: float = 1.0
    ) -> None:
        self.hosts = hosts
        # Emulated seconds a tick stands for: a guest run of so many seconds does the work
        # of so many ticks.
        self.tick_seconds = tick_seconds
        self.memory: dict[str, HostMemory] = {}
        self.disks = disks or Disks(None)
        # False while the process rebuilds its state from the log: what a fold does then
        # happened before, in this process or one before it.
        self.live = True
        self._steps: dict[str, int] = defaultdict(int)
        self.checkpoints = CheckpointHardware(self.disks, self.memory, self._steps)
        self.page_caches = PageCaches()
        self.scratch = {host: ScratchDisk() for host in hosts}
        self.contention = Contention()
        # Guests migrating from and to this process's hosts: pages sent, arrived, waiting.
        self.outgoing: dict[str, Outgoing] = {}
        self.incoming: dict[str, Incoming] = {}
        self.numa = NumaHardware()
        self.shared_reads = SharedReads()
        self.recorded = RecordedGuests()
        self.epoch_pages = EpochPages()
        # Events of the log the guest memory could not follow, not yet logged as such.
        self.diverged: list[GuestMemoryDiverged] = []

    # Following the fold

    def apply(self, before: Fleet, event: Message, seq: int = 0) -> None:
        self._free_scratch(before, event)
        self._forget_page_caches(event)
        try:
            self._apply(before, event)
        except (MemoryModelError, StorageError, CheckpointFileError) as err:
            # Only when rebuilding can an event fail to apply: the bytes it was decided on
            # were written by ticks that a restart does not repeat. The event stands.
            diverged = GuestMemoryDiverged(
                host=str(getattr(event, "host", None) or getattr(event, "target", "")),
                event_type=event.type_name(),
                event_seq=seq,
                subject=event.aggregate(),
                error=str(err),
            )
            log.warning("guest memory could not follow an event", **diverged.model_dump())
            self.diverged.append(diverged)

    def _apply(self, before: Fleet, event: Message) -> None:  # noqa: PLR0912 - one branch per event
        match event:
            case HostRegistered() if event.host in self.hosts:
                self.memory[event.host] = HostMemory.sized(
                    event.mem_mib, event.numa_nodes, event.swap_mib
                )
            case VmCreated() if event.host in self.memory:
                self._created(before, event, self.memory[event.host])
            case VmDestroyed() if event.host in self.memory:
                self.memory[event.host].destroy_vm(event.vm)
                self.disks.destroy(event.vm)
                self.epoch_pages.forget(event.vm)
            case CheckpointStarted() if event.host in self.memory:
                self.checkpoints.started(event, self.memory[event.host], self.live)
            case CheckpointCompleted() | CheckpointFailed():
                self.checkpoints.ended(before, event)
            case VmRestored() if (
                event.host in self.memory and event.checkpoint in before.checkpoints
            ):
                self.checkpoints.restored(before, event, self.memory[event.host])
            case CheckpointDeleted() if (
                event.host in self.memory and event.checkpoint in before.checkpoints
            ):
                self.checkpoints.deleted(before, event)
            case VmResized() if event.host in self.memory and event.vm in before.vms:
                if before.vms[event.vm].mem_mib != event.mem_mib:
                    # Decided on the guest's working set: the log's size stands.
                    self.memory[event.host].resize_vm(
                        event.vm, large_pages(event.mem_mib), keep_used=False
                    )
            case HostCrashed() if event.host in self.memory:
                # The host's RAM is gone: its guests come back from their seeds.
                mem = self.memory[event.host]
                for name in event.vms_lost:
                    vm = before.vms[name]
                    mem.destroy_vm(name)
                    self.epoch_pages.forget(name)
                    mem.create_vm(_mem_spec(name, vm.mem_mib, vm.seed, vm.template, vm.memory_mode))
            case PagesShared() if event.host in self.memory:
                _share(self.memory[event.host], event, self.live)
            case PagesUnshared() if event.host in self.memory:
                self.memory[event.host].unshare_pages(event.vm, event.pages, event.node)
            case VmTemplated() if event.host in self.memory:
                self.memory[event.host].make_template(event.vm)
            case PagesSwappedOut() if event.host in self.memory:
                self.memory[event.host].swap_out(event.vm, np.asarray(event.pages))
            case PagesSwappedIn() if event.host in self.memory:
                self.memory[event.host].swap_in(event.vm, np.asarray(event.pages))
            case MigrationStarted() | MigrationAborted() | MigrationCompleted():
                self._migration(before, event)
            case VmRan() if event.host in self.memory:
                self._run(before, event, self.memory[event.host])
            case VmNumaMoveStarted() | VmNumaMoveCompleted() if event.host in self.memory:
                self.numa.apply(self.memory[event.host], event, self.live)
            case VmRestarted() if event.vm in before.vms:
                self._restarted(before.vms[event.vm], event)
            case VmFailedOver() if event.vm in before.vms and event.backup in before.vms:
                self._failed_over(before, event)
            case GuestBytesFlipped() if event.host in self.memory:
                self._flip(self.memory[event.host], event)

    def _flip(self, mem: HostMemory, event: GuestBytesFlipped) -> None:
        """Fault injection: the bytes inverted, as a write of the guest's would."""
        page = mem.copy_pages(event.vm, [event.page])[0]
        end = event.offset + event.count
        flipped = (page[event.offset : end] ^ 0xFF).tobytes()
        self._write(mem, event.vm, Accesses.write(event.page, flipped, event.offset))

    def _failed_over(self, before: Fleet, event: VmFailedOver) -> None:
        """The backup's memory and steps are the VM's; its old host's copy is fenced off
        wherever this process emulates that host."""
        old = self.memory.get(event.from_host)
        if old is not None and event.vm in old.vms:
            old.destroy_vm(event.vm)
        mem = self.memory.get(event.host)
        if mem is not None and event.backup in mem.vms:
            mem.rename_vm(event.backup, event.vm)
        self._steps[event.vm] = self._steps.pop(event.backup, 0)
        # Pages sent ahead of an epoch the primary did not finish are dropped with it.
        self.epoch_pages.forget(event.backup)
        self.epoch_pages.forget(event.vm)
        self.disks.detach(event.backup)
        vm = before.vms.get(event.vm)
        if vm is not None and mem is not None:
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, vm.active_disk)

    def _restarted(self, vm: Vm, event: VmRestarted) -> None:
        """Its memory comes back from its seed; the failed host's copy is dropped (fenced)
        wherever this process emulates that host."""
        old = self.memory.get(vm.host)
        if old is not None and vm.name in old.vms:
            old.destroy_vm(vm.name)
        new = self.memory.get(event.host)
        if new is not None:
            new.create_vm(_mem_spec(vm.name, event.mem_mib, vm.seed, vm.template, vm.memory_mode))
            # Its disk is on the shared datastore: it restarts from what it wrote.
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, vm.active_disk)
        else:
            self.disks.detach(vm.name)

    def _created(self, before: Fleet, event: VmCreated, mem: HostMemory) -> None:
        if event.fork_of is not None:
            mem.fork_vm(event.fork_of, event.vm)
        elif event.backup_of is not None:
            # Zeros until its FT service copies its primary's state in.
            mem.create_vm(MemSpec.empty(event.vm, large_pages(event.mem_mib)))
        else:
            mem.create_vm(
                _mem_spec(event.vm, event.mem_mib, event.seed, event.template, event.memory_mode)
            )
        self.disks.attach(event.vm, event.disk_gib, event.template, event.seed)
        saved = before.checkpoints.get(event.checkpoint or "")
        if saved is not None:
            # Made from a checkpoint: its memory, devices and a child of its disk.
            self.checkpoints.load(saved, event.vm, event.vm, mem)

    def _forget_page_caches(self, event: Message) -> None:
        """A guest whose memory is made again (or goes) holds no disk block any more, and
        a save of its memory as it was cannot go on."""
        match event:
            case VmDestroyed() | VmRestored() | VmRestarted() | MigrationCompleted():
                self.page_caches.forget(event.vm)
                self.numa.forget(event.vm)
                self.checkpoints.abort_for(event.vm, f"{event.type_name()} during the save")
            case HostCrashed():
                for vm in event.vms_lost:
                    self.page_caches.forget(vm)
                    self.numa.forget(vm)
                    self.checkpoints.abort_for(vm, f"host {event.host} crashed during the save")
            case VmResized():
                self.page_caches.forget(event.vm)
                self.checkpoints.abort_for(event.vm, "the VM was resized during the save")

    def _free_scratch(self, before: Fleet, event: Message) -> None:
        """The bytes of extents the fold frees go with them."""
        match event:
            case ScratchReleased():
                host, vm, tag = event.host, event.vm, event.tag
            case VmDestroyed():
                host, vm, tag = event.host, event.vm, None
            case VmRestarted() if event.vm in before.vms:
                host, vm, tag = before.vms[event.vm].host, event.vm, None
            case MigrationCompleted():
                host, vm, tag = event.source, event.vm, None
            case _:
                return
        disk, known = self.scratch.get(host), before.hosts.get(host)
        if disk is not None and known is not None:
            disk.forget(known.scratch.held(vm, tag))

    def _migration(
        self, before: Fleet, event: MigrationStarted | MigrationAborted | MigrationCompleted
    ) -> None:
        vm = before.vms.get(event.vm)
        src, dst = self.memory.get(event.source), self.memory.get(event.target)
        if not isinstance(event, MigrationStarted):
            self.outgoing.pop(event.vm, None)
            self.incoming.pop(event.vm, None)
        match event:
            case MigrationStarted() if vm is not None:
                full = vm.memory_mode == MemoryMode.FULL
                if src is not None and full and vm.name in src.vms:
                    self.outgoing[vm.name] = Outgoing.of(
                        event.source, src.spec(vm.name).pages, vm.seed
                    )
                if dst is None:
                    return
                # An empty shell of its size, filled by the pages that arrive.
                shell = _mem_spec(vm.name, vm.mem_mib, vm.seed, vm.template, vm.memory_mode)
                if full:
                    shell = replace(shell, profile=EMPTY_PROFILE)
                    self.incoming[vm.name] = Incoming.of(event.target, shell.pages)
                dst.create_vm(shell)
            case MigrationAborted() if vm is not None and vm.host == event.target:
                # Switched over (post-copy) and lost: the source lets its pages go, and
                # the target's guest, which ran nowhere since, is as after a reboot.
                if src is not None and vm.name in src.vms:
                    src.destroy_vm(vm.name)
                if dst is not None and vm.name in dst.vms:
                    dst.destroy_vm(vm.name)
                    dst.create_vm(
                        _mem_spec(vm.name, vm.mem_mib, vm.seed, vm.template, vm.memory_mode)
                    )
            case MigrationAborted() if dst is not None and event.vm in dst.vms:
                dst.destroy_vm(event.vm)
            case MigrationCompleted() if vm is not None:
                self._migrate(vm, event.source, event.target)

    def _migrate(self, vm: Vm, source: str, target: str) -> None:
        """The target keeps the shell its pages filled and the source lets the VM go.
        Rebuilding, the shell holds none of the bytes that crossed (the flows are not
        replayed): the target builds the guest from its seed, as after a reboot."""
        src, dst = self.memory.get(source), self.memory.get(target)
        if dst is not None and (not self.live or vm.name not in dst.vms):
            if vm.name in dst.vms:
                dst.destroy_vm(vm.name)
            dst.create_vm(_mem_spec(vm.name, vm.mem_mib, vm.seed, vm.template, vm.memory_mode))
        if src is not None and vm.name in src.vms:
            src.destroy_vm(vm.name)
        if dst is not None:
            self.disks.attach(vm.name, vm.disk_gib, vm.template, vm.seed, vm.active_disk)
        else:
            self.disks.detach(vm.name)

    # What deciding needs to know

    def facts(self, fleet: Fleet) -> Facts:
        def used_mib(vm: str) -> float:
            v = fleet.vms.get(vm)
            if v is None:
                return 0.0
            if v.memory_mode == MemoryMode.FULL and v.host in self.memory:
                return self.memory[v.host].used_pages(vm) * PAGE_MIB
            return self.contention.active_mib(vm)

        return Facts(
            used_mib=used_mib,
            share_plan=partial(page_sharing.share_plan, self.memory),
            unshare_plan=partial(page_sharing.unshare_plan, self.memory),
            fork_problem=lambda vm: self._fork_problem(fleet, vm),
            swap_problem=self._swap_problem,
            datastore_problem=self.disks.problem,
            checkpoint_problem=lambda name: self.checkpoints.problem(fleet, name),
            checksum=lambda vm: self._checksum(fleet, vm),
            guest_run=lambda cmd: self._plan_run(fleet, cmd),
            numa_outlook=lambda cmd: self.numa.outlook(self.memory, cmd),
        )

    def _fork_problem(self, fleet: Fleet, name: str) -> str | None:
        vm = fleet.vms[name]
        mem = self.memory.get(vm.host)
        if mem is None or name not in mem.vms:
            return f"its host {vm.host} is not emulated here"
        swapped = mem.vm_usage(name).swapped
        return f"{swapped} of its pages are swapped out" if swapped else None

    def _checksum(self, fleet: Fleet, name: str) -> str | None:
        vm = fleet.vms.get(name)
        if vm is None or vm.memory_mode != MemoryMode.FULL or vm.host not in self.memory:
            return None
        return self.memory[vm.host].checksum(name)

    def _plan_run(self, fleet: Fleet, cmd: RunVm) -> VmRan:
        """The steps a run of ``cmd.seconds`` takes, the dirty pages it leaves and (on a
        post-copy target) the remote faults it takes, worked out without writing: the fold
        of VmRan writes them."""
        vm = fleet.vms[cmd.vm]
        mem = self.memory[cmd.host]
        pages = mem.spec(vm.name).pages
        if cmd.replay:
            return VmRan(
                host=cmd.host,
                vm=vm.name,
                tag=cmd.tag,
                seconds=0.0,
                first_step=cmd.replay[0].first_step,
                steps=sum(r.steps for r in cmd.replay),
                writes_per_step=0,
                reads_per_step=0,
                cpu_share=0.0,
                dirty_pages=0,
                replayed=cmd.replay,
            )
        share = min(vm.cpu_cap, 1.0 / self.contention.slowdown(vm.name))
        steps = math.ceil(cmd.seconds / self.tick_seconds - 1e-9) if cmd.seconds > 0 else 0
        writes = reads = 0
        if steps:
            per_tick_writes, per_tick_reads = self._per_tick(vm)
            ticks = cmd.seconds / self.tick_seconds * share
            writes = round(per_tick_writes * ticks / steps)
            reads = round(per_tick_reads * ticks / steps)
        first = self._steps[vm.name]
        if cmd.logged is not None:
            given = cmd.logged
            first, steps = given.first_step, given.steps
            writes, reads = given.writes_per_step, given.reads_per_step
        workload = _workload(vm)
        plan = None
        if vm.inputs is not None:
            plan = self.recorded.plan(
                mem,
                vm,
                first,
                steps,
                workload,
                seconds=cmd.seconds / steps if steps else 0.0,
                writes=writes,
                reads=reads,
                record=cmd.record,
                given=cmd.logged,
            )
            runs = plan.accesses
        else:
            runs = [
                workload.step(pages, step, writes=writes, reads=reads)
                for step in range(first, first + steps)
            ]
        dirty = np.zeros(pages, np.bool_)
        dirty[mem.collect_dirty(vm.name, clear=False)] = True
        for accesses in runs:
            dirty[accesses.write_pages] = True
        incoming = self.incoming.get(vm.name)
        faults = incoming.faults(runs) if incoming and incoming.host == cmd.host else None
        return VmRan(
            host=cmd.host,
            vm=vm.name,
            tag=cmd.tag,
            seconds=cmd.seconds,
            first_step=first,
            steps=steps,
            writes_per_step=writes,
            reads_per_step=reads,
            cpu_share=round(max(0.0, min(1.0, share)), 6),
            dirty_pages=int(np.count_nonzero(dirty)),
            faults=0 if faults is None else len(faults),
            demand=[] if faults is None else faults[:MAX_DEMAND].tolist(),
            checksum_at_start=mem.checksum(vm.name) if cmd.checksum_at_start else None,
            inputs=[] if plan is None else plan.inputs,
            outputs=[] if plan is None else plan.outputs,
            dropped=0 if plan is None else plan.dropped,
        )

    def _per_tick(self, vm: Vm) -> tuple[float, float]:
        """Page writes and reads a tick at full speed."""
        if vm.writes is None:
            return WRITES_PER_TICK, READS_PER_TICK
        return vm.writes.pages_per_s * self.tick_seconds, READS_PER_TICK

    def _run(self, before: Fleet, event: VmRan, mem: HostMemory) -> None:
        """The run's steps, written as they were planned."""
        vm = before.vms.get(event.vm)
        if vm is None or event.vm not in mem.vms:
            return
        pages = mem.spec(vm.name).pages
        workload = _workload(vm)
        runs = event.replayed or [
            RunSteps(
                first_step=event.first_step,
                steps=event.steps,
                writes_per_step=event.writes_per_step,
                reads_per_step=event.reads_per_step,
            )
        ]
        incoming = self.incoming.get(vm.name)
        if incoming is not None and incoming.host != event.host:
            incoming = None

        def write(accesses: Accesses) -> None:
            if incoming is not None:
                # A page not there yet faults: its writes wait for it.
                accesses = incoming.run(accesses)
            self._write(mem, vm.name, accesses)
            self.page_caches.of(vm.name, pages).pages_written(accesses.write_pages)

        given = by_step(event.inputs)
        for run in runs:
            for step in range(run.first_step, run.first_step + run.steps):
                if vm.inputs is not None:
                    # What reached it was decided with the run (none in a migration's).
                    self.recorded.run(
                        mem,
                        vm,
                        step,
                        workload,
                        write,
                        seconds=self.tick_seconds,
                        writes=run.writes_per_step,
                        reads=run.reads_per_step,
                        inputs=given.get(step, []),
                    )
                    continue
                write(
                    workload.step(pages, step, writes=run.writes_per_step, reads=run.reads_per_step)
                )
        if not event.replayed:
            self._steps[vm.name] = max(self._steps[vm.name], event.first_step + event.steps)

    def _swap_problem(self, cmd: SwapOutPages | SwapInPages) -> tuple[RejectionCode, str] | None:
        mem = self.memory.get(cmd.host)
        if mem is None:
            return RejectionCode.UNKNOWN_HOST, f"host {cmd.host} is not emulated here"
        table = mem.page_table(cmd.vm).reshape(-1)
        bad = [p for p in cmd.pages if p >= len(table)]
        if bad:
            return RejectionCode.PAGE_OUT_OF_RANGE, f"{cmd.vm} has pages 0..{len(table) - 1}"
        if isinstance(cmd, SwapOutPages):
            wanted = np.unique(np.asarray(cmd.pages))
            needed = int(np.count_nonzero(table[wanted] >= 0))
            free = mem.usage().swap_free
            if needed > free:
                return RejectionCode.INSUFFICIENT_CAPACITY, (
                    f"host {cmd.host} has {free} free swap blocks, {needed} needed"
                )
        return None

    # Every tick

    def tick(self, fleet: Fleet, tick: int, sim_time: float, tick_s: float) -> list[HostTelemetry]:
        up = [h for h in self.hosts if h in fleet.hosts and fleet.hosts[h].state == HostState.UP]
        # The guests' disk I/O of the last tick is storage demand like any other.
        disk_mbs = {vm: self.disks.mbs(vm, tick_s) for vm in self.disks.io}
        self.tick_seconds = tick_s
        self.contention.run(fleet, up, sim_time, tick_s, disk_mbs)
        # The sample reports memory as the tick starts; the guests then work through it.
        out = samples(
            fleet,
            up,
            tick,
            self.contention,
            self.memory,
            disk_mbs,
            self.disks.usage_gib(),
            {host: self.shared_reads.take(host) for host in up},
        )
        self.numa.step(self.memory, up)
        for host in up:
            self._guest_work(fleet, host)
        self.numa.report(self.memory, tick, up)
        return out

    def _guest_work(self, fleet: Fleet, host: str) -> None:
        """Running full-memory guests write and read pages, slowed as their CPU is. A
        migrating guest works only in the runs its migration asks for (RunVm), each as
        long as a round took on the wire."""
        mem = self.memory.get(host)
        moving = {t.vm for t in fleet.transfers.values()}
        working = [
            vm
            for vm in self.contention.by_host.get(host, [])
            if vm.memory_mode == MemoryMode.FULL
            and vm.state.value == "on"
            and not vm.stunned
            and vm.name not in moving
            # A protected VM runs the runs its FT service asks for, a backup likewise.
            and vm.name not in fleet.ft_driven
            and vm.backup_of is None
        ]
        if mem is None or not working:
            return
        for vm in working:
            speed = 1.0 / self.contention.slowdown(vm.name)
            pages = mem.spec(vm.name).pages
            step = self._steps[vm.name]
            self._steps[vm.name] = step + 1
            writes, reads = self._per_tick(vm)
            if vm.inputs is not None:
                # Its device completions are among its inputs: no disk work besides.
                self.recorded.run(
                    mem,
                    vm,
                    step,
                    _workload(vm),
                    partial(self._write, mem, vm.name),
                    seconds=self.tick_seconds,
                    writes=int(writes * speed),
                    reads=int(reads * speed),
                )
                continue
            cache = self.page_caches.of(vm.name, pages)
            io = self.disks.work(vm.name, speed)
            if io is not None and len(io.read):
                # What it read lands in its page cache: real bytes, pages that map blocks.
                landing = cache.landing(vm.seed, step, len(io.read))
                self._write(mem, vm.name, Accesses.whole_pages(landing, io.data[: len(landing)]))
                cache.map(landing, io.disk, io.read[: len(landing)])
            if io is not None:
                cache.blocks_written(io.disk, io.written)
            accesses = _workload(vm).step(
                pages, step, writes=int(writes * speed), reads=int(reads * speed)
            )
            self.numa.saw(mem, vm.name, accesses)
            self.shared_reads.saw(mem, host, vm.name, accesses.read_pages)
            self._write(mem, vm.name, accesses)
            cache.pages_written(accesses.write_pages)
        mem.decay_heat()

    def _write(self, mem: HostMemory, vm: str, accesses: Accesses) -> None:
        """The guest's accesses, after a checkpoint being saved kept what they overwrite."""
        self.checkpoints.before_write(vm, mem, accesses.write_pages)
        mem.apply(vm, accesses)


def _share(mem: HostMemory, event: PagesShared, live: bool) -> None:
    """Share the event's pairs. A pair whose bytes differ by now is left apart: live, a
    tick wrote one of its pages after the decision (guests run outside the decision
    lock), as if that write broke the sharing at once, and it counts as unshared again;
    rebuilt, a guest holds what its seed and the log made it, not what its ticks wrote,
    and the pair is noted as a divergence."""
    groups: dict[tuple[str, str], list[PagePair]] = defaultdict(list)
    for pair in event.pairs:
        groups[(pair.vm_a, pair.vm_b)].append(pair)
    apart = 0
    for (vm_a, vm_b), pairs in groups.items():
        try:
            mem.share_pages(vm_a, [p.page_a for p in pairs], vm_b, [p.page_b for p in pairs])
        except BytesDiffer:
            plan = page_sharing.share_plan(
                {event.host: mem}, SharePages(host=event.host, pairs=pairs, skip_differing=True)
            )
            if not isinstance(plan, page_sharing.SharePlan):
                raise page_sharing.PairsDiffer(plan[1]) from None
            pages_a, pages_b = [p.page_a for p in plan.pairs], [p.page_b for p in plan.pairs]
            mem.share_pages(vm_a, pages_a, vm_b, pages_b)
            apart += plan.differing
    if apart and live:
        mem.unshared_again += apart
    elif apart:
        raise page_sharing.PairsDiffer(f"{apart} of {len(event.pairs)} pairs differ now")


def _workload(vm: Vm) -> MemWorkload:
    if vm.writes is None:
        return MemWorkload(seed=vm.seed)
    return MemWorkload(
        seed=vm.seed, hot_fraction=vm.writes.hot_fraction, hot_share=vm.writes.hot_share
    )


def _mem_spec(name: str, mem_mib: int, seed: int, template: str, mode: MemoryMode) -> MemSpec:
    return MemSpec(
        name, large_pages(mem_mib), seed=seed, template=template, mode=MemMode(mode.value)
    )
