"""The exported JSON Schemas and AsyncAPI document match the message models."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import Envelope, Kind, Message, Reply, registry
from schemas import export as ex
from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointDamaged,
    CheckpointDeleted,
    CheckpointFailed,
    CheckpointList,
    CheckpointStarted,
    CheckpointView,
    CheckpointVm,
    DeleteCheckpoint,
    ListCheckpoints,
    RestoreVm,
    VmRestored,
)
from schemas.contention import (
    ContentionCleared,
    ContentionDetected,
    Direction,
    Evidence,
    ScalingDecided,
)
from schemas.ft import (
    BackupLoaded,
    DivergeBackup,
    DivergenceInjected,
    FailoverRequested,
    FtMode,
    FtPairView,
    FtStatus,
    GetFtStatus,
    OutputsReleased,
    PairDiverged,
    PairResynced,
    PairSynced,
    ProtectionEnded,
    ProtectionRequested,
    ProtectVm,
    TakeOverVm,
    UnprotectRequested,
    UnprotectVm,
    VmFailedOver,
)
from schemas.ha import HostFailed, HostReturned, RestartVm, VmRestarted, VmRestartFailed
from schemas.host import (
    ClockLeased,
    CrashHost,
    GuestMemoryDiverged,
    HostCrashed,
    HostRecovered,
    HostRegistered,
    HostState,
    HostTelemetry,
    RecoverHost,
)
from schemas.memory import (
    ExportPages,
    FlipGuestBytes,
    GetVmMemory,
    GuestBytesFlipped,
    ImportPages,
    LoggedInput,
    LoggedRun,
    PagePair,
    PagesExported,
    PagesImported,
    PagesShared,
    PagesSwappedIn,
    PagesSwappedOut,
    PagesUnshared,
    RunVm,
    Selection,
    SentPacket,
    SharePages,
    SwapInPages,
    SwapOutPages,
    UnsharePages,
    VmMemory,
    VmRan,
)
from schemas.migration import (
    ListMigrations,
    MigrationList,
    MigrationRoundDone,
    MigrationRoundSent,
    MigrationSwitchingOver,
    MigrationThrottleRaised,
    MigrationView,
    RoundFigures,
)
from schemas.numa import (
    MoveVmNuma,
    NumaOrder,
    VmNumaMoveCompleted,
    VmNumaMoveProgress,
    VmNumaMoveStarted,
)
from schemas.pool import CapacityReleased, CapacityReserved, Owner
from schemas.queries import HostList, HostView, ListHosts, ListVms, QueryFailed, VmList, VmView
from schemas.scheduling import (
    Affinity,
    Candidate,
    ChangeVmSize,
    CopyFile,
    CopyRequested,
    CopyScheduled,
    HostEvacuated,
    MaintainCheapest,
    MaintenanceEnded,
    MaintenanceStarted,
    MigrateVm,
    MigrationReason,
    MigrationRefused,
    MigrationRequested,
    MigrationScheduled,
    PlacementPolicy,
    PlacementRequested,
    PlacementRules,
    PlaceVm,
    RebalanceProposed,
    RoundCompleted,
    SetMaintenance,
    VmPlaced,
    VmRaised,
    VmResizeRequested,
)
from schemas.scratch import AllocateScratch, ReleaseScratch, ScratchAllocated, ScratchReleased
from schemas.service import (
    CommandRejected,
    CommandsIssued,
    RejectionCode,
    ServiceStarted,
    ServiceStopped,
)
from schemas.sharing import (
    ForkVm,
    GetPageDigests,
    GetVmTree,
    HostSharing,
    ListSharing,
    PageDigests,
    PageRange,
    ReadPolicy,
    SetSharingPolicy,
    SharingPassCompleted,
    SharingPolicySet,
    SharingReport,
    SharingTelemetry,
    TreeNode,
    VmForkRequested,
    VmTemplated,
    VmTree,
)
from schemas.tenants import (
    AllocateSlots,
    Assignment,
    ClusterCreated,
    ClusterList,
    ClusterScaled,
    ClusterView,
    CreateCluster,
    JobCompleted,
    JobSubmitted,
    ListClusters,
    ScaleCluster,
    SlotAllocation,
    SlotsAllocated,
    SubmitJob,
    TaskKind,
    TasksAssigned,
    TasksFinished,
)
from schemas.transfers import (
    CopyAborted,
    CopyCompleted,
    CopyStarted,
    MigrationAborted,
    MigrationCompleted,
    MigrationMode,
    MigrationStarted,
    MigrationSwitchedOver,
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
    WorkloadKind,
)
from shared.bus import subjects

REGENERATE = "run `python -m schemas.export` and commit schemas/generated/"

# One valid message of each type; a new message type needs an example here.
ROUND_0 = RoundFigures(
    round=0, live=True, pages=65536, zero_pages=13076, bytes=214876160, duration_s=0.6876
)

EXAMPLES: dict[str, Message] = {
    m.type_name(): m
    for m in [
        CheckpointVm(vm="db", host="h1", checkpoint="before-upgrade"),
        CheckpointStarted(
            vm="db",
            host="h1",
            checkpoint="before-upgrade",
            disk="db",
            child_disk="db.before-upgrade",
            cpu=2,
            mem_mib=1024,
            disk_gib=8,
            template="linux",
            seed=3,
        ),
        CheckpointCompleted(
            vm="db",
            host="h1",
            checkpoint="before-upgrade",
            file="checkpoints/before-upgrade.vmstate",
            bytes=1_073_750_016,
            checksum="3f1c0e2b9a8d7c6b5a4f3e2d1c0b9a8f",
            memory_checksum="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
            device_checksum="9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            stun_ms=1.8,
            save_seconds=2.4,
            pages_copied_aside=412,
        ),
        CheckpointFailed(
            vm="db", host="h1", checkpoint="nightly", reason="the hosts process stopped mid-save"
        ),
        CheckpointDamaged(
            vm="db", host="h1", checkpoint="nightly", reason="it has no file on the datastore"
        ),
        RestoreVm(vm="db", host="h1", checkpoint="before-upgrade"),
        VmRestored(
            vm="db",
            host="h1",
            checkpoint="before-upgrade",
            disk="db.r5f2a",
            memory_checksum="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        ),
        DeleteCheckpoint(checkpoint="before-upgrade", host="h1"),
        CheckpointDeleted(vm="db", host="h1", checkpoint="before-upgrade", disk="db"),
        ListCheckpoints(vm="db"),
        CheckpointList(
            checkpoints=[
                CheckpointView(
                    checkpoint="before-upgrade",
                    vm="db",
                    state="complete",
                    cpu=2,
                    mem_mib=1024,
                    disk="db",
                    bytes=1_073_750_016,
                    checksum="3f1c0e2b9a8d7c6b5a4f3e2d1c0b9a8f",
                    memory_checksum="0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                    stun_ms=1.8,
                )
            ]
        ),
        CreateVm(vm="web-1", cpu=2, mem_mib=2048, host="h1"),
        PowerOnVm(vm="web-1", host="h1"),
        PowerOffVm(vm="web-1", host="h1"),
        VmCreated(vm="web-1", host="h1", cpu=2, mem_mib=2048, priority="high", powered_on=True),
        VmPoweredOn(vm="web-1", host="h1"),
        VmPoweredOff(vm="web-1", host="h1"),
        HostRegistered(host="h1", cpu_cores=8, cpu_mhz=2400, mem_mib=65536),
        HostTelemetry(
            host="h1",
            tick=3,
            cpu_capacity_mhz=19200,
            cpu_demand_mhz=4800,
            cpu_used_mhz=4800,
            mem_capacity_mib=65536,
            mem_reserved_mib=2048,
            vms_running=1,
            vms_total=1,
        ),
        ServiceStarted(
            service="hosts",
            instance="hosts-1",
            version="0.1.0",
            rebuilt_from_seq=1,
            rebuilt_events=0,
        ),
        ServiceStopped(service="hosts", instance="hosts-1", reason="signal", handled=7),
        CommandsIssued(
            service="tenants",
            commands=[
                Envelope.wrap(CreateVm(vm="w1", cpu=1, mem_mib=64), producer="tenants")
                .encode()
                .decode()
            ],
            batch=uuid.UUID(int=7),
        ),
        CommandRejected(
            about="vm/web-1",
            command_id=uuid.UUID(int=1),
            command_type="PowerOnVm",
            code=RejectionCode.UNKNOWN_VM,
            reason="no such vm",
        ),
        ListHosts(),
        ListVms(),
        HostList(
            hosts=[
                HostView(
                    host="h1",
                    state=HostState.UP,
                    numa_nodes=2,
                    cpu_cores=8,
                    cpu_mhz=2400,
                    mem_mib=65536,
                    mem_reserved_mib=2048,
                    cpu_demand_mhz=4800,
                    vms=1,
                )
            ]
        ),
        VmList(
            vms=[
                VmView(
                    vm="web-1",
                    host="h1",
                    cpu=2,
                    mem_mib=2048,
                    priority="low",
                    state=VmState.ON,
                    workload=WorkloadKind.STEADY,
                    memory_mode=MemoryMode.FULL,
                )
            ]
        ),
        QueryFailed(reason="projection is rebuilding"),
        SuspendVm(vm="web-1", host="h1"),
        ResumeVm(vm="web-1", host="h1"),
        ResizeVm(vm="web-1", host="h1", cpu=4, mem_mib=4096),
        DestroyVm(vm="web-1", host="h1"),
        VmSuspended(vm="web-1", host="h1"),
        VmResumed(vm="web-1", host="h1"),
        VmResized(vm="web-1", host="h1", cpu=4, mem_mib=4096),
        VmDestroyed(vm="web-1", host="h1"),
        CrashHost(host="h1"),
        RecoverHost(host="h1"),
        HostCrashed(host="h1", vms_lost=["web-1"]),
        HostRecovered(host="h1"),
        HostFailed(
            host="h1",
            last_heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC),
            last_tick=41,
            silent_seconds=5.2,
            missed_ticks=5,
            vms=["a"],
        ),
        HostReturned(
            host="h1", heartbeat_at=datetime(2026, 1, 1, tzinfo=UTC), tick=60, down_seconds=19.0
        ),
        RestartVm(
            host="h2",
            vm="a",
            from_host="h1",
            cpu=2,
            mem_mib=1024,
            failed_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        VmRestarted(vm="a", host="h2", from_host="h1", cpu=2, mem_mib=1024, since_failure_s=1.5),
        VmRestartFailed(vm="b", host="h1", priority="low", reason="no room"),
        ClockLeased(until_sim_time=120.0, tick=60),
        GuestMemoryDiverged(
            host="h1", event_type="PagesShared", event_seq=9, subject="vm/a", error="not equal"
        ),
        SharePages(host="h1", pairs=[PagePair(vm_a="a", page_a=1, vm_b="b", page_b=2)]),
        UnsharePages(host="h1", vm="a", pages=[1, 2]),
        PagesShared(host="h1", pairs=[PagePair(vm_a="a", page_a=1, vm_b="b", page_b=2)]),
        PagesUnshared(host="h1", vm="a", pages=[1, 2]),
        GetPageDigests(host="h1", ranges=[PageRange(vm="a", first=0, count=2)]),
        PageDigests(
            host="h1",
            ranges=[PageRange(vm="a", first=0, count=1)],
            digests=(7).to_bytes(8, "little"),
            frames=(512).to_bytes(8, "little"),
        ),
        SetSharingPolicy(policy=ReadPolicy(reads=32, window_ticks=4)),
        SharingPolicySet(policy=ReadPolicy(enabled=False)),
        SharingPassCompleted(
            host="h1",
            full_scans=2,
            pages_scanned=24576,
            volatile=12,
            unique=9000,
            proposed=3656,
            bookkeeping_bytes=1_130_000,
            digest="9f1c2a4b5d6e7f80",
        ),
        ForkVm(parent="gold", children=["c1", "c2"]),
        VmForkRequested(parent="gold", host="h1", children=["c1", "c2"]),
        VmTemplated(host="h1", vm="gold", checksum="0f" * 16),
        ListSharing(),
        SharingTelemetry(figures=HostSharing(host="h1", pages_shared=2443, pages_sharing=7376)),
        SharingReport(
            hosts=[HostSharing(host="h1", pages_shared=2443, pages_sharing=7376, saved_mib=28.8)],
            cluster=HostSharing(host="cluster", pages_shared=2443, pages_sharing=7376),
            policy=ReadPolicy(),
            pages_per_second=5000,
        ),
        GetVmTree(),
        VmTree(
            nodes=[
                TreeNode(
                    vm="c1",
                    host="h1",
                    parent="gold",
                    template=False,
                    shared_pages=8190,
                    private_pages=2,
                )
            ]
        ),
        GetVmMemory(vm="web-1", digests=True),
        ExportPages(host="h1", vm="web-1", flow="mig-1", selection=Selection.DIRTY),
        ImportPages(host="h2", vm="web-1", flow="mig-1", batches=3),
        PagesExported(
            host="h1",
            vm="web-1",
            flow="mig-1",
            selection=Selection.ALL,
            guest_pages=512,
            pages=512,
            zero_pages=100,
            batches=4,
            bytes=412 * 4096,
        ),
        PagesImported(
            host="h2", vm="web-1", flow="mig-1", pages=512, zero_pages=100, checksum="00" * 16
        ),
        RunVm(host="h1", vm="web-1", seconds=0.7, tag="run-1"),
        RunVm(
            host="h2",
            vm="web-1-ft1",
            seconds=0,
            tag="ft-web-1-7",
            checksum_at_start=True,
            logged=LoggedRun(
                first_step=40,
                steps=1,
                writes_per_step=25,
                reads_per_step=100,
                inputs=[LoggedInput(step=40, kind="packet", data=b"GET / HTTP/1.1\r\n\r\n")],
            ),
        ),
        VmRan(
            host="h1",
            vm="web-1",
            tag="ft-web-1-7",
            seconds=0.025,
            first_step=40,
            steps=1,
            writes_per_step=25,
            reads_per_step=100,
            cpu_share=1.0,
            dirty_pages=31,
            checksum_at_start="00" * 16,
            inputs=[LoggedInput(step=40, kind="timer", data=(1_800_000_000).to_bytes(8, "little"))],
            outputs=[SentPacket(seq=17, step=40, data=b"\x00" * 16)],
        ),
        ProtectVm(vm="web-1", mode=FtMode.LOCKSTEP, backup_host="h2"),
        ProtectionRequested(
            vm="web-1",
            mode=FtMode.LOCKSTEP,
            primary_host="h1",
            backup="web-1-ft1",
            backup_host="h2",
            epoch_ms=25,
        ),
        ProtectionEnded(vm="web-1", reason="destroyed"),
        BackupLoaded(
            vm="web-1",
            backup="web-1-ft1",
            backup_host="h2",
            primary_checksum="00" * 16,
            backup_checksum="00" * 16,
            pages=8192,
            bytes=22_000_000,
            from_step=40,
        ),
        PairSynced(
            vm="web-1",
            mode=FtMode.RECORD_REPLAY,
            entry=3,
            first_step=43,
            steps=1,
            inputs=2,
            primary_checksum="00" * 16,
            backup_checksum="00" * 16,
            equal=True,
            released=[SentPacket(seq=18, step=43, data=b"\x01" * 16)],
            held_ms=26.5,
        ),
        FailoverRequested(
            vm="web-1",
            priority="high",
            from_host="h1",
            backup="web-1-ft1",
            backup_host="h2",
            lost_at=812.25,
        ),
        TakeOverVm(host="h2", vm="web-1", backup="web-1-ft1", from_host="h1"),
        VmFailedOver(vm="web-1", host="h2", from_host="h1", backup="web-1-ft1", checksum="00" * 16),
        OutputsReleased(
            vm="web-1",
            entry=0,
            first_step=60,
            steps=1,
            released=[SentPacket(seq=44, step=60, data=b"\x02" * 16)],
        ),
        DivergeBackup(vm="web-1"),
        UnprotectVm(vm="web-1"),
        UnprotectRequested(vm="web-1", backup="web-1-ft1"),
        DivergenceInjected(
            vm="web-1", backup="web-1-ft1", backup_host="h2", page=0, offset=24, count=4
        ),
        FlipGuestBytes(host="h2", vm="web-1-ft1", page=0, offset=24, count=4),
        GuestBytesFlipped(host="h2", vm="web-1-ft1", page=0, offset=24, count=4),
        PairDiverged(
            vm="web-1",
            mode=FtMode.LOCKSTEP,
            entry=9,
            first_step=9,
            primary_checksum="00" * 16,
            backup_checksum="11" * 16,
            first_different=24,
            released=[SentPacket(seq=23, step=9, data=b"\x03" * 16)],
        ),
        PairResynced(
            vm="web-1",
            primary_checksum="00" * 16,
            backup_checksum="00" * 16,
            pages=8192,
            bytes=22_000_000,
            released=[SentPacket(seq=24, step=9, data=b"\x04" * 16)],
        ),
        GetFtStatus(),
        FtStatus(
            pairs=[
                FtPairView(
                    vm="web-1",
                    mode=FtMode.RECORD_REPLAY,
                    phase="protected",
                    primary_host="h1",
                    backup="web-1-ft1",
                    backup_host="h2",
                    log_lag=1,
                    entries=3,
                    bytes=22_001_024,
                    held_outputs=2,
                    released_outputs=18,
                    divergences=0,
                    failovers=0,
                )
            ]
        ),
        VmRan(
            host="h1",
            vm="web-1",
            tag="run-1",
            seconds=0.7,
            first_step=12,
            steps=1,
            writes_per_step=2800,
            reads_per_step=716,
            cpu_share=0.8,
            dirty_pages=2333,
        ),
        MigrationRoundSent(migration="mig-1", vm="web-1", figures=ROUND_0, ends_at=12.69),
        MigrationRoundDone(
            migration="mig-1",
            vm="web-1",
            figures=ROUND_0,
            dirty_pages_left=2333,
            throttle=0.0,
            target_checksum="00" * 16,
        ),
        MigrationThrottleRaised(migration="mig-1", vm="web-1", throttle=0.2, after_round=1),
        MigrationSwitchedOver(
            migration="mig-1",
            vm="web-1",
            source="h1",
            target="h2",
            mode=MigrationMode.POSTCOPY,
            checksum_at_stun="00" * 16,
            pages_left=65536,
        ),
        MigrationSwitchingOver(
            migration="mig-1",
            vm="web-1",
            after_round=0,
            dirty_pages=2333,
            expected_downtime_ms=30.6,
        ),
        ListMigrations(),
        MigrationList(
            migrations=[
                MigrationView(
                    migration="mig-1",
                    vm="web-1",
                    source="h1",
                    target="h2",
                    mode=MigrationMode.PRECOPY,
                    state="completed",
                    rounds=2,
                    bytes=224_432_128,
                    throttle=0.0,
                    downtime_ms=31.4,
                    total_s=0.72,
                    checksums_equal=True,
                )
            ]
        ),
        SwapOutPages(host="h1", vm="web-1", pages=[1, 2]),
        SwapInPages(host="h1", vm="web-1", pages=[1, 2]),
        PagesSwappedOut(host="h1", vm="web-1", pages=[1, 2]),
        PagesSwappedIn(host="h1", vm="web-1", pages=[1, 2]),
        MoveVmNuma(host="h1", vm="web-1", node=1, order=NumaOrder.SEQUENTIAL),
        VmNumaMoveStarted(
            host="h1",
            vm="web-1",
            node=1,
            from_node=0,
            order=NumaOrder.HOT_FIRST,
            pages=16_384,
            pages_per_tick=4_096,
            local_share_before=0.5,
        ),
        VmNumaMoveProgress(
            host="h1", vm="web-1", tick=12, pages_moved=4_096, pages_left=12_288, local_share=0.9
        ),
        VmNumaMoveCompleted(
            host="h1",
            vm="web-1",
            node=1,
            pages_moved=16_384,
            pages_left=0,
            large_pages_whole_before=32,
            large_pages_whole_after=16,
            ticks=8,
            local_share_before=0.5,
            local_share_after=1.0,
        ),
        CapacityReserved(
            host="h1",
            reservation="r-1",
            workload="web-1",
            owner=Owner.HIGH,
            cpu_mhz=2400,
            mem_mib=2048,
        ),
        CapacityReleased(host="h1", reservation="r-1"),
        PlaceVm(vm="web-1", priority=Owner.HIGH, cpu=2, mem_mib=2048, min_cpu=1),
        ChangeVmSize(vm="web-1", priority=Owner.HIGH, mem_mib=4096),
        VmResizeRequested(
            vm="web-1", host="h1", cpu=2, mem_mib=4096, from_cpu=2, from_mem_mib=2048
        ),
        PlacementRequested(vm="web-1", priority=Owner.HIGH, cpu=2, mem_mib=2048),
        VmPlaced(
            vm="web-1",
            host="h1",
            priority=Owner.HIGH,
            round=3,
            cpu=2,
            mem_mib=2048,
            score=0.9,
            runners_up=[Candidate(host="h2", score=0.8)],
            filtered={"capacity": 1},
        ),
        RoundCompleted(priority=Owner.LOW, round=3, placed=1, unplaced=0, without_high=True),
        PlaceVm(
            vm="web-2",
            priority=Owner.LOW,
            cpu=2,
            mem_mib=2048,
            policy=PlacementPolicy.SPREAD,
            group="web",
            rules=PlacementRules(
                vm_anti_affinity=Affinity(must=["web-1"]), host_affinity=Affinity(should=["h2"])
            ),
        ),
        VmRaised(vm="web-1", host="h1", cpu=2, mem_mib=2048, from_cpu=1, from_mem_mib=1024),
        MigrateVm(vm="web-1", priority=Owner.LOW, target="h2"),
        MigrationRequested(migration="mig-1", vm="web-1", priority=Owner.LOW, target="h2"),
        MigrationScheduled(
            migration="mig-1",
            vm="web-1",
            source="h1",
            target="h2",
            priority=Owner.LOW,
            round=4,
            reason=MigrationReason.REQUESTED,
            rate_mbps=2500,
            expected_seconds=6.5,
        ),
        MigrationRefused(migration="mig-1", vm="web-1", reason="no host can take web-1"),
        StartMigration(host="h1", target="h2", rate_mbps=2500, migration="mig-1", vm="web-1"),
        MigrationStarted(
            migration="mig-1", vm="web-1", source="h1", target="h2", expected_seconds=6.5
        ),
        MigrationCompleted(migration="mig-1", vm="web-1", source="h1", target="h2"),
        MigrationAborted(
            migration="mig-1", vm="web-1", source="h1", target="h2", reason="h2 crashed"
        ),
        CopyFile(
            copy_id="iso", priority=Owner.LOW, source="h1", target="h2", size_mib=500, rate_mbps=800
        ),
        CopyRequested(
            copy_id="iso", priority=Owner.LOW, source="h1", target="h2", size_mib=500, rate_mbps=800
        ),
        CopyScheduled(
            copy_id="iso",
            source="h1",
            target="h2",
            priority=Owner.LOW,
            round=4,
            size_mib=500,
            rate_mbps=800,
            expected_seconds=5,
        ),
        StartCopy(host="h1", target="h2", rate_mbps=800, copy_id="iso", size_mib=500),
        CopyStarted(copy_id="iso", source="h1", target="h2", size_mib=500, expected_seconds=5),
        CopyCompleted(copy_id="iso", source="h1", target="h2"),
        CopyAborted(copy_id="iso", source="h1", target="h2", reason="h1 crashed"),
        SetMaintenance(host="h1", on=True),
        CreateCluster(cluster="gold", workers=3, min_workers=1, max_workers=5),
        ClusterCreated(
            cluster="gold",
            workers=3,
            min_workers=1,
            max_workers=5,
            priority=Owner.HIGH,
            worker_cpu=2,
            worker_mem_mib=4096,
        ),
        ScaleCluster(cluster="gold", delta=-1, host="h1", reason="contention on h1"),
        ClusterScaled(
            cluster="gold", from_workers=3, to_workers=2, removed=["gold-w2"], reason="contention"
        ),
        SubmitJob(cluster="gold", job="sort", maps=40, reduces=4),
        JobSubmitted(
            cluster="gold",
            job="sort",
            maps=40,
            reduces=4,
            map_cpu_seconds=10,
            reduce_cpu_seconds=10,
            scratch_mib_per_map=64,
            submitted_sim_time=12.0,
        ),
        TasksAssigned(
            cluster="gold",
            job="sort",
            tasks=[Assignment(vm="gold-w0", kind=TaskKind.MAP, task=0)],
        ),
        TasksFinished(
            cluster="gold",
            job="sort",
            done=[Assignment(vm="gold-w0", kind=TaskKind.MAP, task=0)],
            requeued=[Assignment(vm="gold-w2", kind=TaskKind.MAP, task=1)],
        ),
        JobCompleted(cluster="gold", job="sort", elapsed_seconds=95.0),
        AllocateSlots(
            cluster="gold", slots=[SlotAllocation(vm="gold-w0", map_slots=1, reduce_slots=1)]
        ),
        SlotsAllocated(
            cluster="gold", slots=[SlotAllocation(vm="gold-w0", map_slots=1, reduce_slots=1)]
        ),
        ListClusters(),
        ClusterList(
            clusters=[
                ClusterView(
                    cluster="gold",
                    priority=Owner.HIGH,
                    workers=2,
                    running=2,
                    min_workers=1,
                    max_workers=5,
                    map_slots=4,
                    reduce_slots=2,
                    running_tasks=3,
                    jobs_running=["sort"],
                    contended_hosts=["h1"],
                )
            ]
        ),
        ContentionDetected(
            host="h1",
            episode="h1-t7",
            tick=7,
            evidence=Evidence(ticks=2, slowdown=2.1, cpu_ready_ms=900, demand_ratio=1.4),
        ),
        ContentionCleared(
            host="h1",
            episode="h1-t7",
            tick=19,
            evidence=Evidence(ticks=3, slowdown=1.0, cpu_ready_ms=0, demand_ratio=0.5),
        ),
        ScalingDecided(
            host="h1",
            episode="h1-t7",
            cluster="batch",
            direction=Direction.DOWN,
            delta=-2,
            reason="contention on h1",
        ),
        MaintainCheapest(count=2),
        MaintenanceStarted(host="h1", migrations=["mnt-1"], cost_rank=0),
        HostEvacuated(host="h1"),
        MaintenanceEnded(host="h1"),
        RebalanceProposed(
            resource="cpu",
            spread_before=0.6,
            spread_after=0.1,
            threshold=0.5,
            migrations=["reb-1"],
        ),
        StunVm(vm="web-1", host="h1"),
        UnstunVm(vm="web-1", host="h1"),
        ThrottleVm(vm="web-1", host="h1", cpu_cap=0.5),
        VmStunned(vm="web-1", host="h1"),
        VmUnstunned(vm="web-1", host="h1"),
        VmThrottled(vm="web-1", host="h1", cpu_cap=0.5),
        AllocateScratch(host="h1", vm="worker-1", tag="job-1", mib=512, quota_mib=4096),
        ReleaseScratch(host="h1", vm="worker-1", tag="job-1"),
        ScratchAllocated(
            host="h1",
            vm="worker-1",
            tag="job-1",
            mib=512,
            extent=0,
            quota_mib=4096,
            used_mib=512,
            pool_used_mib=1536,
        ),
        ScratchReleased(host="h1", vm="worker-1", tag=None, mib=512, pool_used_mib=1024),
        VmMemory(
            vm="web-1",
            host="h1",
            mode="full",
            pages=512,
            resident_pages=512,
            shared_pages=3,
            swapped_pages=0,
            used_pages=400,
            checksum="00" * 16,
            digests=[1, 2],
        ),
    ]
}


def _envelope(data: Message) -> Envelope[Any]:
    subject = "hosts" if isinstance(data, Reply) else None
    return Envelope.wrap(data, producer="test", subject=subject, id=uuid.UUID(int=7))


def _channel_of(doc: dict[str, Any], type_name: str) -> str:
    names: list[str] = [n for n, ch in doc["channels"].items() if type_name in ch["messages"]]
    assert len(names) == 1, f"{type_name} is in channels {names}"
    return names[0]


def _bus_subject(env: Envelope[Any]) -> str | None:
    """The subject the bus adapters publish ``env`` on; None for a reply, sent to an inbox."""
    ns = ex.NAMESPACE
    match env.data.kind:
        case Kind.EVENT:
            return subjects.event_subject(ns, env)
        case Kind.COMMAND:
            return subjects.command_subject(ns, env)
        case Kind.TELEMETRY:
            return subjects.telemetry_subject(ns, env)
        case Kind.QUERY:
            return subjects.query_subject(ns, env.subject)
        case _:
            return None


def _address_regex(address: str, type_name: str) -> str:
    """``vplane.cmd.{subject}.{type}`` as a regex: ``type`` is this type, other names any tokens."""
    token = r"[A-Za-z0-9_-]+"
    out = []
    for i, piece in enumerate(re.split(r"\{(\w+)\}", address)):  # odd pieces are parameters
        if i % 2 == 0:
            out.append(re.escape(piece))
        elif piece == "type":
            out.append(re.escape(type_name))
        else:
            out.append(rf"{token}(\.{token})*")
    return "".join(out)


def test_committed_files_match_the_models() -> None:
    """schemas/generated/ holds exactly what the models export now, byte for byte."""
    drifted = ex.check(ex.GENERATED)
    assert not drifted, f"schemas/generated/ is out of date ({', '.join(drifted)}): {REGENERATE}"


def test_every_message_type_has_a_schema_and_is_in_asyncapi() -> None:
    """Each registered type has its schema file and a message in the channel of its kind."""
    doc = json.loads((ex.GENERATED / ex.ASYNCAPI).read_text())
    kind_channels = {
        Kind.EVENT: "events",
        Kind.COMMAND: "commands",
        Kind.TELEMETRY: "telemetry",
        Kind.QUERY: "queries",
        Kind.REPLY: "replies",
    }
    for cls in registry:
        name = cls.type_name()
        path = ex.GENERATED / ex.schema_file(name)
        assert path.is_file(), f"{path.name} is missing: {REGENERATE}"
        assert json.loads(path.read_text())["properties"]["type"]["const"] == name
        assert doc["components"]["schemas"][name] == {"$ref": path.name}
        assert doc["components"]["messages"][name]["payload"]["$ref"].endswith(f"/{name}")
        assert _channel_of(doc, name) == kind_channels[cls.kind], f"{name}: {REGENERATE}"
    commands = sorted(c.type_name() for c in registry if c.kind is Kind.COMMAND)
    assert doc["channels"]["commands"]["parameters"]["type"]["enum"] == commands


def test_check_reports_changed_missing_and_extra_files(tmp_path: Path) -> None:
    """check() names each drifted file, and write() brings the directory back in line."""
    ex.write(tmp_path)
    assert ex.check(tmp_path) == []
    changed = tmp_path / ex.schema_file("CreateVm")
    changed.write_text(changed.read_text().replace('"minimum": 1', '"minimum": 2', 1))
    (tmp_path / ex.ASYNCAPI).unlink()
    (tmp_path / ex.schema_file("RetiredEvent")).write_text("{}\n")
    expected = sorted([changed.name, ex.ASYNCAPI, ex.schema_file("RetiredEvent")])
    assert ex.check(tmp_path) == expected
    assert ex.main(["--check", str(tmp_path)]) == 1
    assert ex.main([str(tmp_path)]) == 0
    assert ex.check(tmp_path) == []
    assert not (tmp_path / ex.schema_file("RetiredEvent")).exists()


def test_output_is_deterministic_json() -> None:
    """Two renders are identical: sorted keys, two-space indent and a trailing newline."""
    first, second = ex.render(), ex.render()
    assert first == second
    for name, text in first.items():
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", name


def test_asyncapi_addresses_match_the_bus_subjects() -> None:
    """Each example's bus subject, as shared/bus/subjects.py builds it, fits its channel."""
    doc = ex.asyncapi()
    for name, data in EXAMPLES.items():
        subject = _bus_subject(_envelope(data))
        address = doc["channels"][_channel_of(doc, name)]["address"]
        if subject is None or address is None:
            assert subject == address, name
        else:
            assert re.fullmatch(_address_regex(address, name), subject), (address, subject)
    dlq = doc["channels"]["deadLetters"]["address"]
    assert re.fullmatch(
        _address_regex(dlq, ""), subjects.dead_letter_subject(ex.NAMESPACE, "hosts-cmd")
    )


def test_dead_letter_headers_match_the_nats_adapter() -> None:
    """The documented dead-letter headers are the ones the NATS adapter sets."""
    from shared.bus import nats as nats_bus

    headers = {nats_bus.H_REASON, nats_bus.H_COUNT, nats_bus.H_SUBJECT, nats_bus.H_CONSUMER}
    assert set(ex.DEAD_LETTER_HEADERS) == headers


def test_example_envelopes_validate_against_their_schemas() -> None:
    """An envelope of each type, as encoded on the wire, is valid under its exported schema."""
    jsonschema = pytest.importorskip("jsonschema")
    missing = [c.type_name() for c in registry if c.type_name() not in EXAMPLES]
    assert not missing, f"add examples of {missing} to EXAMPLES in {Path(__file__).name}"
    for type_name, data in EXAMPLES.items():
        schema = json.loads((ex.GENERATED / ex.schema_file(type_name)).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        wire = json.loads(_envelope(data).encode())
        validator.validate(wire)
        assert not validator.is_valid(wire | {"type": "Other"}), f"{type_name}: type is a const"
        assert not validator.is_valid(wire | {"extra": 1}), f"{type_name}: extra fields allowed"
