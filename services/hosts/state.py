"""The hosts' state as a fold over their events: ``evolve(fleet, event) -> fleet``, pure."""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from schemas import Envelope, Message
from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointDamaged,
    CheckpointDeleted,
    CheckpointFailed,
    CheckpointStarted,
    VmRestored,
)
from schemas.ft import ProtectionEnded, ProtectionRequested, VmFailedOver
from schemas.ha import HostFailed, HostReturned, VmRestarted
from schemas.host import HostCrashed, HostRecovered, HostRegistered, HostState
from schemas.numa import VmNumaMoveCompleted, VmNumaMoveStarted
from schemas.pool import CapacityReleased, CapacityReserved, vcpus_covered
from schemas.scratch import ScratchAllocated, ScratchReleased
from schemas.sharing import VmTemplated
from schemas.transfers import (
    CopyAborted,
    CopyCompleted,
    CopyStarted,
    MigrationAborted,
    MigrationCompleted,
    MigrationStarted,
    MigrationSwitchedOver,
)
from schemas.vm import (
    GuestInputs,
    GuestWrites,
    MemoryMode,
    Priority,
    VmCreated,
    VmDestroyed,
    VmPoweredOff,
    VmPoweredOn,
    VmResized,
    VmResumed,
    VmState,
    VmStunned,
    VmSuspended,
    VmThrottled,
    VmUnstunned,
    WorkloadKind,
)
from services.hosts.checkpoint_records import Checkpoint, CheckpointState
from services.hosts.resources import HostSpec
from services.hosts.scratch import ScratchPool

# A vCPU may be overcommitted this many times over a host's physical cores.
VCPU_PER_CORE = 4

# When a transfer started, for events folded without their envelope (in tests).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Host:
    spec: HostSpec
    state: HostState = HostState.UP
    swap_mib: int = 0
    scratch: ScratchPool = field(default_factory=ScratchPool)
    # Declared failed by its silence and not returned since (it keeps its own state).
    silent: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shown_state(self) -> HostState:
        return HostState.FAILED if self.silent and self.state == HostState.UP else self.state


@dataclass(frozen=True, slots=True)
class Vm:
    name: str
    host: str
    cpu: int
    mem_mib: int
    priority: Priority
    state: VmState
    workload: WorkloadKind = WorkloadKind.STEADY
    memory_mode: MemoryMode = MemoryMode.ACCOUNTING
    template: str = "linux"
    seed: int = 0
    stunned: bool = False
    cpu_cap: float = 1.0
    # Its virtual disk on the shared datastore (0: none, made before VMs had disks), and
    # the disk of its chain it writes now ("": the one named after it).
    disk_gib: int = 0
    disk: str = ""
    # Its dirty rate, when not the hosts' default pace.
    writes: GuestWrites | None = None
    # A fork's template, whose pages it maps copy-on-write; and whether it is a template
    # itself (quiesced, read-only: the base of its forks).
    fork_of: str | None = None
    templated: bool = False
    # Driven by inputs from outside (packets, timers, devices): its execution can be
    # recorded and replayed.
    inputs: GuestInputs | None = None
    # The FT backup of this VM: created empty, it runs only what its FT service asks.
    backup_of: str | None = None

    @property
    def active_disk(self) -> str:
        return self.disk or self.name


class TransferKind(enum.StrEnum):
    MIGRATION = "migration"
    COPY = "copy"


@dataclass(frozen=True, slots=True)
class Transfer:
    """A live migration or a file copy in flight, from its Started event to its outcome."""

    id: str
    kind: TransferKind
    source: str
    target: str
    vm: str | None
    started_at: datetime
    started_sim: float
    expected_seconds: float
    # The Started event: its outcome is caused by it, in the same workflow.
    cause: Envelope[Message] | None = None
    # The end that crashed meanwhile: the transfer is to be aborted.
    failed: str | None = None
    # A post-copy migration's VM runs on the target already; its pages are still crossing.
    switched: bool = False

    @property
    def key(self) -> str:
        return transfer_key(self.kind, self.id)


def transfer_key(kind: TransferKind, transfer: str) -> str:
    """Migration and copy ids are named by different parties, so each kind has its own."""
    return f"{kind}/{transfer}"


@dataclass(frozen=True, slots=True)
class Held:
    """A reservation in the ledger, as far as a host needs it: room for one workload."""

    workload: str
    cpu_mhz: float
    mem_mib: float
    purpose: str = "vm"

    def covers(self, cpu: int, mem_mib: int) -> bool:
        return cpu <= vcpus_covered(self.cpu_mhz) and mem_mib <= self.mem_mib + 1e-9


@dataclass(frozen=True, slots=True)
class Fleet:
    hosts: Mapping[str, Host] = field(default_factory=dict)
    vms: Mapping[str, Vm] = field(default_factory=dict)
    transfers: Mapping[str, Transfer] = field(default_factory=dict)
    # Every transfer ever started: an outcome's id derives from its transfer's, so an id
    # may never be used twice.
    transfer_keys: frozenset[str] = frozenset()
    # The ledger's reservations, by host and name: what a scheduler made room for. A
    # host runs nothing new, and grows nothing, that no reservation there covers.
    reserved: Mapping[str, Mapping[str, Held]] = field(default_factory=dict)
    # The names of the VMs on each host: a host's room is checked for every create, and
    # scanning every VM for it made creating the n-th VM cost n.
    on_host: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Checkpoints by name, each disk made from another (a checkpoint's child, a restore)
    # with its parent, and how many restores there have been (they name their disks).
    checkpoints: Mapping[str, Checkpoint] = field(default_factory=dict)
    disk_parents: Mapping[str, str] = field(default_factory=dict)
    restores: int = 0
    # The Started event of each VM's NUMA move, until its Completed: the move's reports
    # follow in its workflow. The machine says whether a move is under way (a VM whose
    # memory went meanwhile leaves its entry here until its next move).
    numa_moves: Mapping[str, Envelope[Message] | None] = field(default_factory=dict)
    # Protected VMs: they run only the runs their FT service asks for, not in ticks.
    ft_driven: frozenset[str] = frozenset()

    def disk_children(self, disk: str) -> list[str]:
        return sorted(child for child, parent in self.disk_parents.items() if parent == disk)

    def covered(self, host: str, workload: str, cpu: int, mem_mib: int) -> bool:
        return any(
            r.workload == workload and r.covers(cpu, mem_mib)
            for r in self.reserved.get(host, {}).values()
        )

    def vms_on(self, host: str) -> list[Vm]:
        return [self.vms[name] for name in sorted(self.on_host.get(host, ()))]

    def children_of(self, vm: str) -> list[str]:
        """The forks that map ``vm``'s pages."""
        host = self.vms[vm].host if vm in self.vms else ""
        return [v.name for v in self.vms_on(host) if v.fork_of == vm]

    def migration_of(self, vm: str) -> Transfer | None:
        return next(
            (t for t in self.transfers.values() if t.kind == TransferKind.MIGRATION and t.vm == vm),
            None,
        )

    def incoming(self, host: str) -> list[Vm]:
        """The VMs migrating to ``host``: their room there is taken from the start."""
        return [
            self.vms[t.vm]
            for t in self.transfers.values()
            if t.target == host and t.vm is not None and t.vm in self.vms and not t.switched
        ]

    def mem_reserved(self, host: str) -> int:
        return sum(vm.mem_mib for vm in self.vms_on(host))

    def vcpus_placed(self, host: str) -> int:
        return sum(vm.cpu for vm in self.vms_on(host))

    def room(self, host: str, cpu: int, mem_mib: int, *, besides: str | None = None) -> bool:
        h = self.hosts[host]
        others = [vm for vm in self.vms_on(host) + self.incoming(host) if vm.name != besides]
        return (
            h.state == HostState.UP
            and h.spec.mem_mib - sum(vm.mem_mib for vm in others) >= mem_mib
            and sum(vm.cpu for vm in others) + cpu <= h.spec.cpu_cores * VCPU_PER_CORE
        )


def evolve(  # noqa: PLR0911, PLR0912, PLR0915 - one case per event
    fleet: Fleet, event: Message, env: Envelope[Message] | None = None
) -> Fleet:
    """``env`` is the event's envelope, when the fold has it: a transfer's clock starts at
    its Started event's ``occurred_at``."""
    match event:
        case HostRegistered():
            spec = HostSpec(
                name=event.host,
                cpu_cores=event.cpu_cores,
                cpu_mhz=event.cpu_mhz,
                mem_mib=event.mem_mib,
                net_mbps=event.net_mbps,
                storage_mbs=event.storage_mbs,
                storage_gib=event.storage_gib,
                numa_nodes=event.numa_nodes,
            )
            pool = ScratchPool(event.scratch_mib)
            return _with_host(fleet, Host(spec, HostState.UP, event.swap_mib, pool))
        case ProtectionRequested():
            return replace(fleet, ft_driven=fleet.ft_driven | {event.vm})
        case ProtectionEnded():
            return replace(fleet, ft_driven=fleet.ft_driven - {event.vm})
        case HostCrashed() if event.host in fleet.hosts:
            fleet = _with_host(fleet, replace(fleet.hosts[event.host], state=HostState.DOWN))
            fleet = _fail_transfers(fleet, event.host)
            # Their memory comes back from their seeds: a fork maps its template no more.
            lost = {
                name: replace(fleet.vms[name], state=VmState.OFF, fork_of=None)
                for name in event.vms_lost
                if name in fleet.vms
            }
            return replace(fleet, vms={**fleet.vms, **lost})
        case HostFailed() | HostReturned() if event.host in fleet.hosts:
            silent = isinstance(event, HostFailed)
            return _with_host(fleet, replace(fleet.hosts[event.host], silent=silent))
        case HostRecovered() if event.host in fleet.hosts:
            return _with_host(fleet, replace(fleet.hosts[event.host], state=HostState.UP))
        case VmCreated():
            state = VmState.ON if event.powered_on else VmState.OFF
            fleet = _with_vm(
                fleet,
                Vm(
                    event.vm,
                    event.host,
                    event.cpu,
                    event.mem_mib,
                    event.priority,
                    state,
                    event.workload,
                    event.memory_mode,
                    event.template,
                    event.seed,
                    disk_gib=event.disk_gib,
                    writes=event.writes,
                    fork_of=event.fork_of,
                    inputs=event.inputs,
                    backup_of=event.backup_of,
                ),
            )
            if event.checkpoint is not None and event.checkpoint in fleet.checkpoints:
                # Its disk is a child of the checkpoint's, named after it.
                parent = fleet.checkpoints[event.checkpoint].disk
                fleet = replace(fleet, disk_parents={**fleet.disk_parents, event.vm: parent})
            return fleet
        case VmRestarted() if event.vm in fleet.vms:
            # Its old host never runs it again (when that host returns, it is fenced).
            old = fleet.vms[event.vm]
            fleet = _fail_transfers_of(fleet, event.vm, old.host)
            fleet = _reclaim(fleet, old.host, event.vm)
            restarted = replace(
                old,
                host=event.host,
                cpu=event.cpu,
                mem_mib=event.mem_mib,
                state=VmState.ON,
                stunned=False,
                cpu_cap=1.0,
                fork_of=None,
            )
            return _with_vm(fleet, restarted)
        case VmFailedOver() if event.vm in fleet.vms and event.backup in fleet.vms:
            # The backup's memory is the VM's now; the host it ran on is gone.
            old, backup = fleet.vms[event.vm], fleet.vms[event.backup]
            fleet = _reclaim(fleet, old.host, event.vm)
            fleet = replace(
                fleet,
                vms={k: v for k, v in fleet.vms.items() if k != event.backup},
                on_host=_moved(fleet.on_host, event.backup, backup.host, None),
            )
            live = replace(
                old, host=event.host, state=VmState.ON, stunned=False, cpu_cap=1.0, fork_of=None
            )
            return _with_vm(fleet, live)
        case VmDestroyed():
            fleet = _reclaim(fleet, event.host, event.vm)
            gone = fleet.vms.get(event.vm)
            if gone is None:
                return fleet
            return replace(
                fleet,
                vms={k: v for k, v in fleet.vms.items() if k != event.vm},
                on_host=_moved(fleet.on_host, event.vm, gone.host, None),
            )
        case VmResized() if event.vm in fleet.vms:
            return _with_vm(
                fleet, replace(fleet.vms[event.vm], cpu=event.cpu, mem_mib=event.mem_mib)
            )
        case VmPoweredOn() | VmResumed() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], state=VmState.ON))
        case VmPoweredOff() if event.vm in fleet.vms:
            vm = replace(fleet.vms[event.vm], state=VmState.OFF, stunned=False)
            return _with_vm(fleet, vm)
        case VmStunned() | VmUnstunned() if event.vm in fleet.vms:
            stunned = isinstance(event, VmStunned)
            return _with_vm(fleet, replace(fleet.vms[event.vm], stunned=stunned))
        case VmTemplated() if event.vm in fleet.vms:
            vm = replace(fleet.vms[event.vm], templated=True, state=VmState.OFF, stunned=False)
            return _with_vm(fleet, vm)
        case VmThrottled() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], cpu_cap=event.cpu_cap))
        case VmSuspended() if event.vm in fleet.vms:
            return _with_vm(fleet, replace(fleet.vms[event.vm], state=VmState.SUSPENDED))
        case MigrationStarted() | CopyStarted():
            return _started(fleet, event, env)
        case MigrationCompleted():
            fleet = _ended(fleet, transfer_key(TransferKind.MIGRATION, event.migration))
            # Scratch space is local to a host: the VM starts on the target without any.
            fleet = _reclaim(fleet, event.source, event.vm)
            if event.vm not in fleet.vms:
                return fleet
            # The target resumes it as it was before the stun, and unthrottled.
            # A fork's shared pages crossed as bytes: it maps its template no more.
            landed = replace(
                fleet.vms[event.vm], host=event.target, stunned=False, cpu_cap=1.0, fork_of=None
            )
            target = fleet.hosts.get(event.target)
            if target is not None and target.state == HostState.DOWN:
                # Its target's crash (in the target's process) and its completion crossed:
                # it is lost with the target, like the VMs the crash took.
                landed = replace(landed, state=VmState.OFF, stunned=False)
            return _with_vm(fleet, landed)
        case MigrationAborted() | MigrationSwitchedOver():
            return (
                _aborted(fleet, event)
                if isinstance(event, MigrationAborted)
                else _switched(fleet, event)
            )
        case CopyCompleted() | CopyAborted():
            return _ended(fleet, transfer_key(TransferKind.COPY, event.copy_id))
        case ScratchAllocated() | ScratchReleased() if event.host in fleet.hosts:
            return _scratch(fleet, event)
        case CapacityReserved() | CapacityReleased():
            return _reserve(fleet, event)
        case VmNumaMoveStarted() | VmNumaMoveCompleted():
            return _numa_moved(fleet, event, env)
        case (
            CheckpointStarted()
            | CheckpointCompleted()
            | CheckpointFailed()
            | CheckpointDamaged()
            | VmRestored()
            | CheckpointDeleted()
        ):
            return _checkpointed(fleet, event, env)
    return fleet


def _checkpointed(
    fleet: Fleet,
    event: CheckpointStarted
    | CheckpointCompleted
    | CheckpointFailed
    | CheckpointDamaged
    | VmRestored
    | CheckpointDeleted,
    env: Envelope[Message] | None,
) -> Fleet:
    checkpoints, parents = dict(fleet.checkpoints), dict(fleet.disk_parents)
    vm = fleet.vms.get(event.vm)
    match event:
        case CheckpointStarted():
            checkpoints[event.checkpoint] = Checkpoint.started(event, env)
            parents[event.child_disk] = event.disk
            if vm is not None:
                fleet = _with_vm(fleet, replace(vm, disk=event.child_disk))
        case CheckpointCompleted() if event.checkpoint in checkpoints:
            saved = checkpoints[event.checkpoint]
            checkpoints[event.checkpoint] = saved.completed(event)
            if event.vm_disk is not None:
                # The disk was copied: what the VM wrote meanwhile is merged back into its own.
                parents.pop(saved.child_disk, None)
                if vm is not None:
                    fleet = _with_vm(fleet, replace(vm, disk=event.vm_disk))
        case CheckpointFailed() | CheckpointDamaged() if event.checkpoint in checkpoints:
            state = (
                CheckpointState.FAILED
                if isinstance(event, CheckpointFailed)
                else CheckpointState.DAMAGED
            )
            checkpoints[event.checkpoint] = replace(
                checkpoints[event.checkpoint], state=state, reason=event.reason
            )
        case VmRestored() if event.checkpoint in checkpoints:
            parents[event.disk] = checkpoints[event.checkpoint].disk
            if vm is not None:
                fleet = _with_vm(fleet, replace(vm, disk=event.disk))
            fleet = replace(fleet, restores=fleet.restores + 1)
        case CheckpointDeleted() if event.checkpoint in checkpoints:
            gone = checkpoints.pop(event.checkpoint)
            # The VM's disk was merged back into the checkpoint's (or the checkpoint's copy
            # went): one disk fewer.
            parents = {c: p for c, p in parents.items() if c != gone.child_disk}
            if vm is not None:
                fleet = _with_vm(fleet, replace(vm, disk=event.disk))
    return replace(fleet, checkpoints=checkpoints, disk_parents=parents)


def _numa_moved(
    fleet: Fleet, event: VmNumaMoveStarted | VmNumaMoveCompleted, env: Envelope[Message] | None
) -> Fleet:
    moves = {vm: started for vm, started in fleet.numa_moves.items() if vm != event.vm}
    if isinstance(event, VmNumaMoveStarted):
        moves[event.vm] = env
    return replace(fleet, numa_moves=moves)


def _reserve(fleet: Fleet, event: CapacityReserved | CapacityReleased) -> Fleet:
    """The ledger's change on one host; a reservation that replaces another on the same
    host does it in the same step."""
    gone = {event.reservation if isinstance(event, CapacityReleased) else event.replaces}
    held = {k: r for k, r in fleet.reserved.get(event.host, {}).items() if k not in gone}
    if isinstance(event, CapacityReserved):
        held[event.reservation] = Held(
            event.workload, event.cpu_mhz, event.mem_mib, sys.intern(event.purpose)
        )
    return replace(fleet, reserved={**fleet.reserved, event.host: held})


def _started(
    fleet: Fleet, event: MigrationStarted | CopyStarted, env: Envelope[Message] | None
) -> Fleet:
    if isinstance(event, MigrationStarted):
        kind, transfer, vm = TransferKind.MIGRATION, event.migration, event.vm
    else:
        kind, transfer, vm = TransferKind.COPY, event.copy_id, None
    started = Transfer(
        id=transfer,
        kind=kind,
        source=event.source,
        target=event.target,
        vm=vm,
        started_at=env.occurred_at if env is not None else EPOCH,
        started_sim=env.sim_time if env is not None else 0.0,
        expected_seconds=event.expected_seconds,
        cause=env,
    )
    return replace(
        fleet,
        transfers={**fleet.transfers, started.key: started},
        transfer_keys=fleet.transfer_keys | {started.key},
    )


def _aborted(fleet: Fleet, event: MigrationAborted) -> Fleet:
    fleet = _ended(fleet, transfer_key(TransferKind.MIGRATION, event.migration))
    vm = fleet.vms.get(event.vm)
    if vm is None:
        return fleet
    if event.vm_lost:
        # Its pages were split between two hosts, one of them gone: it runs nowhere.
        return _with_vm(fleet, replace(vm, state=VmState.OFF, stunned=False, cpu_cap=1.0))
    if vm.host != event.source:
        return fleet
    # It runs on at the source as it did before the migration stunned or slowed it.
    return _with_vm(fleet, replace(vm, stunned=False, cpu_cap=1.0))


def _switched(fleet: Fleet, event: MigrationSwitchedOver) -> Fleet:
    """The VM runs on the target; its migration goes on until its last page is there."""
    key = transfer_key(TransferKind.MIGRATION, event.migration)
    moving = fleet.transfers.get(key)
    vm = fleet.vms.get(event.vm)
    if moving is None or vm is None:
        return fleet
    fleet = replace(fleet, transfers={**fleet.transfers, key: replace(moving, switched=True)})
    return _with_vm(fleet, replace(vm, host=event.target, stunned=False, cpu_cap=1.0))


def _ended(fleet: Fleet, key: str) -> Fleet:
    if key not in fleet.transfers:
        return fleet
    return replace(fleet, transfers={k: t for k, t in fleet.transfers.items() if k != key})


def _fail_transfers(fleet: Fleet, host: str) -> Fleet:
    failed = {
        k: replace(t, failed=host)
        for k, t in fleet.transfers.items()
        if host in (t.source, t.target) and t.failed is None
    }
    if not failed:
        return fleet
    return replace(fleet, transfers={**fleet.transfers, **failed})


def _fail_transfers_of(fleet: Fleet, vm: str, host: str) -> Fleet:
    """A VM restarted elsewhere leaves its migration (from its failed host) to be aborted."""
    failed = {
        k: replace(t, failed=host)
        for k, t in fleet.transfers.items()
        if t.vm == vm and not t.failed
    }
    return replace(fleet, transfers={**fleet.transfers, **failed}) if failed else fleet


def _scratch(fleet: Fleet, event: ScratchAllocated | ScratchReleased) -> Fleet:
    host = fleet.hosts[event.host]
    if isinstance(event, ScratchAllocated):
        pool = host.scratch.grant(event.vm, event.tag, event.mib, event.quota_mib, event.extent)
    else:
        pool = host.scratch.drop(event.vm, event.tag)
    return _with_host(fleet, replace(host, scratch=pool))


def _reclaim(fleet: Fleet, host: str, vm: str) -> Fleet:
    """The VM left ``host``: its scratch space goes back to the pool. The fold does it
    rather than an event of its own, so no VM can leave and keep space by a lost event."""
    h = fleet.hosts.get(host)
    if h is None:
        return fleet
    pool = h.scratch.reclaim(vm)
    return fleet if pool is h.scratch else _with_host(fleet, replace(h, scratch=pool))


def _with_host(fleet: Fleet, host: Host) -> Fleet:
    return replace(fleet, hosts={**fleet.hosts, host.name: host})


def _with_vm(fleet: Fleet, vm: Vm) -> Fleet:
    old = fleet.vms.get(vm.name)
    on_host = fleet.on_host
    if old is None or old.host != vm.host:
        on_host = _moved(on_host, vm.name, None if old is None else old.host, vm.host)
    return replace(fleet, vms={**fleet.vms, vm.name: vm}, on_host=on_host)


def _moved(
    on_host: Mapping[str, frozenset[str]], vm: str, source: str | None, target: str | None
) -> Mapping[str, frozenset[str]]:
    changed = dict(on_host)
    if source is not None:
        changed[source] = changed.get(source, frozenset()) - {vm}
    if target is not None:
        changed[target] = changed.get(target, frozenset()) | {vm}
    return changed
