"""The hosts' state and decisions, pure: ``decide(fleet, command, facts)`` and ``evolve``.

``Facts`` are what the emulated hardware knows that the log does not (a guest's used
memory, whether two pages hold the same bytes); the handler reads them from the
machine and passes them in, so deciding stays free of I/O and of mutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from schemas import Envelope, Event, Message
from schemas.checkpoints import CheckpointVm, DeleteCheckpoint, RestoreVm
from schemas.ft import TakeOverVm, VmFailedOver
from schemas.ha import RestartVm, VmRestarted
from schemas.host import (
    CrashHost,
    HostCrashed,
    HostRecovered,
    HostState,
    RecoverHost,
)
from schemas.memory import (
    ExportPages,
    FlipGuestBytes,
    GuestBytesFlipped,
    ImportPages,
    PagesShared,
    PagesSwappedIn,
    PagesSwappedOut,
    PagesUnshared,
    RunVm,
    SharePages,
    SwapInPages,
    SwapOutPages,
    UnsharePages,
    VmRan,
)
from schemas.numa import MoveVmNuma
from schemas.scratch import AllocateScratch, ReleaseScratch, ScratchAllocated, ScratchReleased
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import (
    CopyStarted,
    MigrationMode,
    MigrationStarted,
    StartCopy,
    StartMigration,
)
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    ResumeVm,
    StunVm,
    SuspendVm,
    ThrottleVm,
    UnstunVm,
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
)
from services.hosts import checkpointing, forking, numa_moves
from services.hosts.checks import (
    Rejected,
    full_vm_on,
    host_named,
    host_up,
    not_migrating,
    vm_on,
)
from services.hosts.disks import MIN_FREE_BYTES
from services.hosts.memory.geometry import PAGE_SIZE
from services.hosts.numa_moves import NOTHING_TO_MOVE, NumaOutlook
from services.hosts.page_sharing import Problem, SharePlan, UnsharePlan
from services.hosts.scratch import NoRoom, NotHeld
from services.hosts.state import Fleet, TransferKind, Vm, transfer_key

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the machine knows: a guest's used memory, and whether two pages are equal."""

    used_mib: Callable[[str], float] = lambda _vm: 0.0
    # What sharing (or unsharing) the pages does, else the rejection (code, reason).
    share_plan: Callable[[SharePages], SharePlan | Problem] = lambda c: SharePlan(c.pairs)
    unshare_plan: Callable[[UnsharePages], UnsharePlan | Problem] = lambda _c: UnsharePlan(0, None)
    # Why a VM cannot be forked (its pages swapped out), or None.
    fork_problem: Callable[[str], str | None] = lambda _vm: None
    swap_problem: Callable[[SwapOutPages | SwapInPages], tuple[RejectionCode, str] | None] = (
        lambda _c: None
    )
    # The wall clock, for how long a restart took after its host's failure.
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    # Why the shared datastore cannot take so many more bytes for what is named, or None.
    datastore_problem: Callable[[int, str], str | None] = lambda _need, _what: None
    # What is wrong with a checkpoint's file (read back whole), or None.
    checkpoint_problem: Callable[[str], str | None] = lambda _name: None
    # A full-memory guest's checksum now (None for one without bytes).
    checksum: Callable[[str], str | None] = lambda _vm: None
    # What running a guest would do (its steps, the dirty pages it leaves), not done yet.
    guest_run: Callable[[RunVm], VmRan] | None = None
    # Where a VM's vCPUs and pages are, for a NUMA move; None off this process's hosts.
    numa_outlook: Callable[[MoveVmNuma], NumaOutlook | None] = lambda _c: NOTHING_TO_MOVE


def decide(fleet: Fleet, env: Envelope[Message], facts: Facts | None = None) -> list[Event]:
    cmd = env.data
    try:
        return _decide(fleet, cmd, facts or Facts())
    except Rejected as rejected:
        return [CommandRejected.of(env, rejected.code, rejected.reason)]


def _decide(fleet: Fleet, cmd: Message, facts: Facts) -> list[Event]:  # noqa: PLR0911, PLR0912
    match cmd:
        case CreateVm():
            created = _create(fleet, cmd)
            first: list[Event] = []
            if cmd.fork_of is not None:
                first = forking.templating(fleet, cmd, facts.checksum, facts.fork_problem)
            elif cmd.checkpoint is not None:
                created = checkpointing.created_from(
                    fleet, created, facts.checkpoint_problem(cmd.checkpoint)
                )
            # Disks are thin: a new one needs room only to start, for what its guest writes.
            full = facts.datastore_problem(MIN_FREE_BYTES, f"a {cmd.disk_gib} GiB thin disk")
            if full is not None:
                raise Rejected(RejectionCode.DATASTORE_FULL, f"no disk for {cmd.vm}: {full}")
            return [*first, created]
        case CheckpointVm():
            return [checkpointing.checkpoint(fleet, cmd, facts.datastore_problem)]
        case RestoreVm():
            if (vm := fleet.vms.get(cmd.vm)) is not None:
                forking.refuse_on_template(fleet, vm, cmd)
            return [checkpointing.restore(fleet, cmd, facts.checkpoint_problem(cmd.checkpoint))]
        case DeleteCheckpoint():
            return [checkpointing.delete(fleet, cmd)]
        case CrashHost():
            host = host_named(fleet, cmd.host)
            if host.state == HostState.DOWN:
                raise Rejected(RejectionCode.WRONG_STATE, f"host {cmd.host} is already down")
            lost = sorted(vm.name for vm in fleet.vms_on(cmd.host) if vm.state != VmState.OFF)
            return [HostCrashed(host=cmd.host, vms_lost=lost)]
        case RecoverHost():
            if host_named(fleet, cmd.host).state == HostState.UP:
                raise Rejected(RejectionCode.WRONG_STATE, f"host {cmd.host} is up")
            return [HostRecovered(host=cmd.host)]
        case SharePages():
            host_up(fleet, cmd.host)
            for pair in cmd.pairs:
                for name in (pair.vm_a, pair.vm_b):
                    full_vm_on(fleet, name, cmd.host)
            share = _checked(facts.share_plan(cmd))
            return [
                PagesShared(
                    host=cmd.host,
                    pairs=share.pairs,
                    saved_frames=share.saved_frames,
                    already=share.already,
                    differing=share.differing,
                )
            ]
        case UnsharePages():
            host_up(fleet, cmd.host)
            full_vm_on(fleet, cmd.vm, cmd.host)
            unshare = _checked(facts.unshare_plan(cmd))
            return [
                PagesUnshared(
                    host=cmd.host,
                    vm=cmd.vm,
                    pages=cmd.pages,
                    reason=cmd.reason,
                    copied=unshare.copied,
                    node=unshare.node,
                )
            ]
        case SwapOutPages() | SwapInPages():
            host_up(fleet, cmd.host)
            vm_on(fleet, cmd.vm, cmd.host)
            _check(facts.swap_problem(cmd))
            if isinstance(cmd, SwapOutPages):
                return [PagesSwappedOut(host=cmd.host, vm=cmd.vm, pages=cmd.pages)]
            return [PagesSwappedIn(host=cmd.host, vm=cmd.vm, pages=cmd.pages)]
        case StartMigration():
            return [_start_migration(fleet, cmd)]
        case MoveVmNuma():
            return [numa_moves.start(fleet, cmd, facts.numa_outlook)]
        case RunVm():
            return [_run(fleet, cmd, facts)]
        case TakeOverVm():
            return [_take_over(fleet, cmd, facts)]
        case FlipGuestBytes():
            return [_flip(fleet, cmd)]
        case RestartVm():
            return [_restart(fleet, cmd, facts)]
        case AllocateScratch() | ReleaseScratch():
            return [_scratch(fleet, cmd)]
        case StartCopy():
            _ends(fleet, cmd, TransferKind.COPY, cmd.copy_id)
            return [
                CopyStarted(
                    copy_id=cmd.copy_id,
                    source=cmd.host,
                    target=cmd.target,
                    size_mib=cmd.size_mib,
                    expected_seconds=cmd.size_mib * 8 / cmd.rate_mbps,
                )
            ]
        case (
            PowerOnVm()
            | PowerOffVm()
            | SuspendVm()
            | ResumeVm()
            | ResizeVm()
            | DestroyVm()
            | StunVm()
            | UnstunVm()
            | ThrottleVm()
        ):
            host_up(fleet, cmd.host)
            vm = vm_on(fleet, cmd.vm, cmd.host)
            return [_lifecycle(fleet, vm, cmd, facts)]
    raise Rejected(
        RejectionCode.WRONG_STATE, f"the hosts service does not handle {cmd.type_name()}"
    )


def _start_migration(fleet: Fleet, cmd: StartMigration) -> MigrationStarted:
    _ends(fleet, cmd, TransferKind.MIGRATION, cmd.migration)
    vm = vm_on(fleet, cmd.vm, cmd.host)
    not_migrating(fleet, vm)
    forking.refuse_on_template(fleet, vm, cmd)
    if cmd.mode != MigrationMode.PRECOPY and vm.memory_mode != MemoryMode.FULL:
        raise Rejected(
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {vm.name} has no guest memory bytes to pull on demand: "
            f"{cmd.mode} needs a full-memory VM (pre-copy moves it)",
        )
    _reserved(fleet, cmd.target, vm.name, vm.cpu, vm.mem_mib)
    if not fleet.room(cmd.target, vm.cpu, vm.mem_mib):
        raise Rejected(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"host {cmd.target} has no room for {vm.name} ({vm.cpu} vCPUs, {vm.mem_mib} MiB)",
        )
    return MigrationStarted(
        migration=cmd.migration,
        vm=vm.name,
        source=cmd.host,
        target=cmd.target,
        expected_seconds=vm.mem_mib * 8 / cmd.rate_mbps,
        mode=cmd.mode,
        downtime_ms=cmd.downtime_ms,
        rate_mbps=cmd.rate_mbps,
        mem_mib=vm.mem_mib,
        memory_mode=vm.memory_mode,
        running=vm.state == VmState.ON and not vm.stunned,
    )


def _run(fleet: Fleet, cmd: RunVm, facts: Facts) -> VmRan:
    """A running guest's run; or, on the source of a post-copy migration, the target's
    runs replayed on the memory it sent (the guest is stunned there)."""
    host_up(fleet, cmd.host)
    if cmd.replay:
        moving = fleet.migration_of(cmd.vm)
        if moving is None or not moving.switched or moving.source != cmd.host:
            raise Rejected(
                RejectionCode.WRONG_STATE,
                f"only the source of {cmd.vm}'s post-copy migration replays its runs",
            )
    else:
        vm = full_vm_on(fleet, cmd.vm, cmd.host)
        # An FT backup is off and runs only what its FT service asks.
        if vm.backup_of is None and (vm.state != VmState.ON or vm.stunned):
            raise Rejected(
                RejectionCode.WRONG_STATE,
                f"VM {vm.name} is {'stunned' if vm.stunned else vm.state}: it does not run",
            )
        if (cmd.record or cmd.logged is not None) and vm.inputs is None:
            raise Rejected(
                RejectionCode.INVALID_REQUEST,
                f"VM {vm.name} takes no inputs from outside: its runs cannot be recorded",
            )
    if facts.guest_run is None:
        raise Rejected(RejectionCode.UNKNOWN_HOST, f"host {cmd.host} is not emulated here")
    return facts.guest_run(cmd)


PAGES_PER_MIB = 2**20 // PAGE_SIZE


def _flip(fleet: Fleet, cmd: FlipGuestBytes) -> GuestBytesFlipped:
    host_up(fleet, cmd.host)
    vm = full_vm_on(fleet, cmd.vm, cmd.host)
    if cmd.offset + cmd.count > PAGE_SIZE or cmd.page >= vm.mem_mib * PAGES_PER_MIB:
        raise Rejected(RejectionCode.PAGE_OUT_OF_RANGE, "the bytes to flip are not in the guest")
    return GuestBytesFlipped(
        host=cmd.host, vm=cmd.vm, page=cmd.page, offset=cmd.offset, count=cmd.count
    )


def _take_over(fleet: Fleet, cmd: TakeOverVm, facts: Facts) -> VmFailedOver:
    """The backup becomes the VM, within the reservation its scheduler moved here."""
    host_up(fleet, cmd.host)
    backup = vm_on(fleet, cmd.backup, cmd.host)
    if backup.backup_of != cmd.vm:
        raise Rejected(
            RejectionCode.INVALID_REQUEST, f"VM {cmd.backup} is not the backup of {cmd.vm}"
        )
    vm = fleet.vms.get(cmd.vm)
    if vm is None:
        raise Rejected(RejectionCode.UNKNOWN_VM, f"no VM {cmd.vm} to take over")
    _reserved(fleet, cmd.host, cmd.vm, vm.cpu, vm.mem_mib)
    return VmFailedOver(
        vm=cmd.vm,
        host=cmd.host,
        from_host=cmd.from_host,
        backup=cmd.backup,
        checksum=facts.checksum(cmd.backup),
    )


def _scratch(fleet: Fleet, cmd: AllocateScratch | ReleaseScratch) -> Event:
    pool = host_up(fleet, cmd.host).scratch
    vm_on(fleet, cmd.vm, cmd.host)
    try:
        if isinstance(cmd, AllocateScratch):
            after = pool.allocate(cmd.vm, cmd.tag, cmd.mib, cmd.quota_mib)
            return ScratchAllocated(
                host=cmd.host,
                vm=cmd.vm,
                tag=cmd.tag,
                mib=cmd.mib,
                extent=pool.next_extent,
                quota_mib=after.quota(cmd.vm),
                used_mib=after.used(cmd.vm),
                pool_used_mib=after.used_mib,
            )
        after, freed = pool.release(cmd.vm, cmd.tag)
    except NoRoom as err:
        raise Rejected(RejectionCode.INSUFFICIENT_CAPACITY, str(err)) from err
    except NotHeld as err:
        raise Rejected(RejectionCode.WRONG_STATE, str(err)) from err
    return ScratchReleased(
        host=cmd.host, vm=cmd.vm, tag=cmd.tag, mib=freed, pool_used_mib=after.used_mib
    )


def _ends(fleet: Fleet, cmd: StartMigration | StartCopy, kind: TransferKind, transfer: str) -> None:
    """Both ends of a transfer exist, differ and are up, and its id is new."""
    host_named(fleet, cmd.host)
    host_named(fleet, cmd.target)
    if cmd.target == cmd.host:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"{kind} {transfer} goes from {cmd.host} to itself"
        )
    host_up(fleet, cmd.host)
    host_up(fleet, cmd.target)
    if transfer_key(kind, transfer) in fleet.transfer_keys:
        raise Rejected(RejectionCode.ALREADY_EXISTS, f"{kind} {transfer} was started already")


def _check(problem: tuple[RejectionCode, str] | None) -> None:
    if problem is not None:
        raise Rejected(*problem)


def _checked(plan: T | tuple[RejectionCode, str]) -> T:
    if isinstance(plan, tuple):
        raise Rejected(*plan)
    return plan


def _restart(fleet: Fleet, cmd: RestartVm, facts: Facts) -> VmRestarted:
    """A failed host's VM, started here from its seed at the size its scheduler reserved
    (the reservation is the say on room: it was taken in the ledger)."""
    host_up(fleet, cmd.host)
    vm = fleet.vms.get(cmd.vm)
    if vm is None:
        raise Rejected(RejectionCode.UNKNOWN_VM, f"no VM {cmd.vm}")
    if vm.host != cmd.from_host:
        raise Rejected(
            RejectionCode.WRONG_STATE, f"VM {cmd.vm} is on {vm.host}, not on {cmd.from_host}"
        )
    _reserved(fleet, cmd.host, cmd.vm, cmd.cpu, cmd.mem_mib)
    return VmRestarted(
        vm=cmd.vm,
        host=cmd.host,
        from_host=cmd.from_host,
        cpu=cmd.cpu,
        mem_mib=cmd.mem_mib,
        since_failure_s=round(max(0.0, (facts.now() - cmd.failed_at).total_seconds()), 3),
    )


def _create(fleet: Fleet, cmd: CreateVm) -> VmCreated:
    if cmd.vm in fleet.vms:
        raise Rejected(
            RejectionCode.ALREADY_EXISTS, f"VM {cmd.vm} already exists on {fleet.vms[cmd.vm].host}"
        )
    if cmd.host is None:
        raise Rejected(
            RejectionCode.NO_RESERVATION,
            f"CreateVm {cmd.vm} names no host: a VM is placed by a scheduler (PlaceVm), "
            "which reserves its room in the ledger first",
        )
    if cmd.inputs is not None and cmd.memory_mode != MemoryMode.FULL:
        raise Rejected(
            RejectionCode.ACCOUNTING_ONLY,
            f"VM {cmd.vm} has no guest memory to take inputs into: ask for full memory",
        )
    host_up(fleet, cmd.host)
    _reserved(fleet, cmd.host, cmd.vm, cmd.cpu, cmd.mem_mib)
    if not fleet.room(cmd.host, cmd.cpu, cmd.mem_mib):
        free = fleet.hosts[cmd.host].spec.mem_mib - fleet.mem_reserved(cmd.host)
        raise Rejected(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"host {cmd.host} has no room for {cmd.cpu} vCPUs and {cmd.mem_mib} MiB "
            f"({free} MiB free)",
        )
    return VmCreated(
        vm=cmd.vm,
        host=cmd.host,
        cpu=cmd.cpu,
        mem_mib=cmd.mem_mib,
        priority=cmd.priority,
        powered_on=cmd.power_on,
        workload=cmd.workload,
        memory_mode=cmd.memory_mode,
        template=cmd.template,
        seed=cmd.seed,
        disk_gib=cmd.disk_gib,
        checkpoint=cmd.checkpoint,
        writes=cmd.writes,
        fork_of=cmd.fork_of,
        inputs=cmd.inputs,
        backup_of=cmd.backup_of,
    )


def _reserved(fleet: Fleet, host: str, vm: str, cpu: int, mem_mib: int) -> None:
    """What a host runs changes only through the ledger: a reservation on ``host`` for
    ``vm`` must cover its new size."""
    if not fleet.covered(host, vm, cpu, mem_mib):
        raise Rejected(
            RejectionCode.NO_RESERVATION,
            f"no reservation on {host} covers {vm} at {cpu} vCPUs and {mem_mib} MiB: "
            "capacity changes go through a scheduler (PlaceVm, ChangeVmSize, MigrateVm)",
        )


def _lifecycle(fleet: Fleet, vm: Vm, cmd: Message, facts: Facts) -> Event:  # noqa: PLR0911
    forking.refuse_on_template(fleet, vm, cmd)

    def need(*states: VmState) -> None:
        if vm.state not in states:
            raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is {vm.state}")

    match cmd:
        case PowerOnVm():
            need(VmState.OFF)
            return VmPoweredOn(vm=vm.name, host=vm.host)
        case PowerOffVm():
            need(VmState.ON, VmState.SUSPENDED)
            return VmPoweredOff(vm=vm.name, host=vm.host)
        case SuspendVm():
            need(VmState.ON)
            return VmSuspended(vm=vm.name, host=vm.host)
        case ResumeVm():
            need(VmState.SUSPENDED)
            return VmResumed(vm=vm.name, host=vm.host)
        case DestroyVm():
            need(VmState.OFF)
            not_migrating(fleet, vm)
            return VmDestroyed(vm=vm.name, host=vm.host)
        case ResizeVm():
            return _resize(fleet, vm, cmd, facts)
        case StunVm():
            need(VmState.ON)
            if vm.stunned:
                raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is already stunned")
            return VmStunned(vm=vm.name, host=vm.host, checksum=facts.checksum(vm.name))
        case UnstunVm():
            if not vm.stunned:
                raise Rejected(RejectionCode.WRONG_STATE, f"VM {vm.name} is not stunned")
            return VmUnstunned(vm=vm.name, host=vm.host)
        case ThrottleVm():
            return VmThrottled(vm=vm.name, host=vm.host, cpu_cap=cmd.cpu_cap)
    raise Rejected(RejectionCode.WRONG_STATE, f"not a VM lifecycle command: {cmd.type_name()}")


def _resize(fleet: Fleet, vm: Vm, cmd: ResizeVm, facts: Facts) -> VmResized:
    not_migrating(fleet, vm)
    cpu = cmd.cpu if cmd.cpu is not None else vm.cpu
    mem = cmd.mem_mib if cmd.mem_mib is not None else vm.mem_mib
    used = None
    if mem < vm.mem_mib:
        used = facts.used_mib(vm.name)
        if mem < used:
            raise Rejected(
                RejectionCode.BELOW_USED_MEMORY,
                f"VM {vm.name} uses {used:.0f} MiB; cannot shrink it to {mem} MiB",
            )
    _reserved(fleet, vm.host, vm.name, cpu, mem)
    if not fleet.room(vm.host, cpu, mem, besides=vm.name):
        raise Rejected(
            RejectionCode.INSUFFICIENT_CAPACITY,
            f"host {vm.host} has no room for {vm.name} at {cpu} vCPUs and {mem} MiB",
        )
    return VmResized(vm=vm.name, host=vm.host, cpu=cpu, mem_mib=mem, used_mib=used)


def check_transfer(fleet: Fleet, env: Envelope[Message]) -> list[Event]:
    """Why an ExportPages or ImportPages cannot run (a rejection), or [] when it can."""
    cmd = env.data
    assert isinstance(cmd, ExportPages | ImportPages)
    try:
        host_up(fleet, cmd.host)
        moving = fleet.migration_of(cmd.vm)
        if moving is not None and cmd.host in (moving.source, moving.target):
            # Into the shell the target holds for the VM while it migrates, or (after a
            # post-copy switchover) out of the source that still holds its pages.
            full_vm_on(fleet, cmd.vm, moving.target if moving.switched else moving.source)
        else:
            full_vm_on(fleet, cmd.vm, cmd.host)
    except Rejected as rejected:
        return [CommandRejected.of(env, rejected.code, rejected.reason)]
    return []
