"""Every service's outcomes carried out through a bus that fails on purpose, on every
bus: appends lost before they land or after (their acknowledgement lost), sends and
samples lost, the connection dropped for a while, a service restarted with commands
unsent. Whatever failed, the log shows each command answered once and whole, each
issued command sent once its cause was in the log, no event twice, no host
over-committed (tests/contract/exactly_once.py)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from schemas import Command, Envelope, Message
from schemas.pool import Owner
from schemas.scheduling import (
    Affinity,
    MaintainCheapest,
    MigrateVm,
    PlacementRules,
    PlaceVm,
    SetMaintenance,
)
from schemas.tenants import ClusterScaled, CreateCluster, SubmitJob
from schemas.transfers import StartMigration
from schemas.vm import CreateVm, PowerOffVm, WorkloadKind
from services.scheduler.state import incoming
from shared.loops import MAX_FAILURES
from shared.testing import eventually, poll
from shared.testing_faults import Faults, Rule, of_type
from tests.contract.conftest import Broker
from tests.contract.exactly_once import assert_exactly_once
from tests.reserving import reservation, reserve
from tests.unit.stack import Stack, service_stack

GIB = 1024
QUIET: dict[str, Any] = {"ha_failures": 0, "rebalance_threshold": 1.0}


class Sender:
    """The test's commands, remembered so that each must be answered too."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ids: set[uuid.UUID] = set()

    async def send(self, command: Command) -> None:
        self.ids.add((await self.stack.client.send(command)).id)

    async def answer(self, command: Command, *, count: int = 1) -> list[Envelope[Message]]:
        env = Envelope.wrap(command, producer="test")
        self.ids.add(env.id)
        return await self.stack.client.wait_for(
            lambda e: e.causation_id == env.id,
            count=count,
            timeout=20,
            before=lambda: self.stack.bus.send(env),
        )


async def hit(rule: Rule, what: str) -> None:
    """Wait until the fault has been injected as often as planned."""
    await eventually(lambda: rule.hits == rule.times, timeout=20, what=f"the fault on {what}")


async def count(stack: Stack, kind: str, n: int, match: Callable[[Any], bool] = bool) -> list[Any]:
    found = await poll(
        lambda: stack.of_type(kind),
        lambda es: len([e for e in es if match(e.data)]) >= n,
        timeout=30,
        what=f"{n} {kind}",
    )
    return [e.data for e in found if match(e.data)]


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
async def hosts_only(broker: Broker, faults: Faults) -> AsyncIterator[Stack]:
    async with service_stack(
        2,
        connect=broker.connect,
        namespace=broker.namespace,
        faults=faults,
        settings={**QUIET, "speed": 8.0, "tick_seconds": 0.1},
        only=("hosts", "migration-coordinator"),
    ) as stack:
        yield stack


async def test_hosts_answer_each_command_once_through_lost_appends_and_acks(
    hosts_only: Stack, faults: Faults
) -> None:
    """CreateVm's answer lands but its acknowledgement is lost; PowerOffVm's append is
    lost; StartMigration's answer lands unacknowledged and its completion (the migration
    coordinator's step) is lost once; two samples are lost. Each command is answered
    once, the migration completes once, and telemetry goes on. (No scheduler runs: the
    test reserves each VM's room, and the migration's on its target, as one would.)"""
    stack, me = hosts_only, Sender(hosts_only)
    created = faults.fail_append(of_type("VmCreated"), landed=True)
    off = faults.fail_append(of_type("VmPoweredOff"))
    started = faults.fail_append(of_type("MigrationStarted"), landed=True)
    completed = faults.fail_append(of_type("MigrationCompleted"))
    samples = faults.fail_emit(of_type("HostTelemetry"), times=2)

    for vm, host in (("a", "h1"), ("b", "h1"), ("c", "h2")):
        await reserve(stack.bus, reservation(vm, host, 1, 64))
        [answer] = await me.answer(CreateVm(vm=vm, cpu=1, mem_mib=64, host=host))
        assert answer.type == "VmCreated", answer.data
    await hit(created, "VmCreated")
    [answer] = await me.answer(PowerOffVm(vm="b", host="h1"))
    assert answer.type == "VmPoweredOff", answer.data
    await hit(off, "VmPoweredOff")
    arriving = reservation("a", "h2", 1, 64, name=incoming("m1"), purpose="migration")
    await reserve(stack.bus, arriving)
    await me.send(StartMigration(host="h1", target="h2", rate_mbps=1000, migration="m1", vm="a"))
    await count(stack, "MigrationCompleted", 1)
    await hit(started, "MigrationStarted")
    await hit(completed, "MigrationCompleted")
    await hit(samples, "HostTelemetry")

    await assert_exactly_once(stack, me.ids)
    assert Counter(e.type for e in await stack.of_type("VmCreated", "MigrationCompleted")) == {
        "VmCreated": 3,
        "MigrationCompleted": 1,
    }


@pytest.fixture
async def pool(broker: Broker, faults: Faults) -> AsyncIterator[Stack]:
    async with service_stack(
        3, connect=broker.connect, namespace=broker.namespace, faults=faults, settings=QUIET
    ) as stack:
        yield stack


async def placed_and_created(stack: Stack, vms: list[str]) -> dict[str, str]:
    await count(stack, "VmCreated", len(vms))
    ledger = await stack.ledger()
    return {vm: ledger.located[vm] for vm in vms}


async def test_schedulers_place_each_vm_once_through_lost_appends_and_sends(
    pool: Stack, faults: Faults
) -> None:
    """A request's queueing is lost once; a round's placements land unacknowledged; a
    CreateVm is lost on its way to the hosts; a reservation round of the high
    scheduler is lost before it lands. Every VM is placed and created once."""
    stack, me = pool, Sender(pool)
    faults.fail_append(of_type("PlacementRequested"))
    placed = faults.fail_append(of_type("VmPlaced"), landed=True)
    sent = faults.fail_send(of_type("CreateVm"))
    high = faults.fail_append(of_type("RoundCompleted"))
    vms = [f"v{i}" for i in range(6)]
    for i, vm in enumerate(vms):
        prio = Owner.HIGH if i % 2 else Owner.LOW
        await me.send(PlaceVm(vm=vm, priority=prio, cpu=2, mem_mib=4 * GIB))
    await placed_and_created(stack, vms)
    for rule, what in ((placed, "VmPlaced"), (sent, "CreateVm"), (high, "RoundCompleted")):
        await hit(rule, what)
    await assert_exactly_once(stack, me.ids)
    assert sorted(e.data.vm for e in await stack.of_type("VmPlaced")) == vms  # type: ignore[attr-defined]
    assert sorted(e.data.vm for e in await stack.of_type("VmCreated")) == vms  # type: ignore[attr-defined]


async def test_a_migration_and_maintenance_happen_once_through_lost_acks(
    pool: Stack, faults: Faults
) -> None:
    """A requested migration's scheduling lands unacknowledged and its StartMigration
    is lost once; SetMaintenance's answer (MaintenanceStarted and a migration request
    per VM) lands unacknowledged; MaintainCheapest's answer is lost before it lands.
    Each VM moves once per request, each host is emptied once."""
    stack, me = pool, Sender(pool)
    vms = [f"v{i}" for i in range(4)]
    for vm in vms:
        await me.send(PlaceVm(vm=vm, priority=Owner.LOW, cpu=1, mem_mib=2 * GIB))
    where = await placed_and_created(stack, vms)

    scheduled = faults.fail_append(of_type("MigrationScheduled"), landed=True)
    start = faults.fail_send(of_type("StartMigration"))
    target = next(h for h in ("h1", "h2", "h3") if h != where["v0"])
    [queued] = await me.answer(MigrateVm(vm="v0", priority=Owner.LOW, target=target))
    assert queued.type == "MigrationRequested", queued.data
    await count(stack, "MigrationCompleted", 1)
    await hit(scheduled, "MigrationScheduled")
    await hit(start, "StartMigration")

    maintenance = faults.fail_append(of_type("MaintenanceStarted"), landed=True)
    host = (await stack.ledger()).located["v1"]
    answer = await me.answer(SetMaintenance(host=host, on=True))
    assert answer[0].type == "MaintenanceStarted", answer[0].data
    await hit(maintenance, "MaintenanceStarted")
    await count(stack, "HostEvacuated", 1)

    cheapest = faults.fail_append(of_type("MaintenanceStarted"))
    answer = await me.answer(MaintainCheapest(count=1))
    assert answer[0].type == "MaintenanceStarted", answer[0].data
    await hit(cheapest, "MaintenanceStarted")
    await count(stack, "HostEvacuated", 2)

    await assert_exactly_once(stack, me.ids)
    evacuated = [e.data.host for e in await stack.of_type("HostEvacuated")]  # type: ignore[attr-defined]
    assert len(evacuated) == len(set(evacuated)) == 2
    requested = await stack.of_type("MigrationRequested")
    done = await stack.of_type("MigrationCompleted")
    assert len(done) == len(requested)
    ledger = await stack.ledger()
    assert sorted(ledger.located) == vms
    assert all(ledger.located[vm] not in evacuated for vm in vms)


async def test_a_round_with_unsent_commands_is_sent_once_by_the_restarted_scheduler(
    pool: Stack, faults: Faults
) -> None:
    """Every CreateVm of a round fails to go out until the scheduler stops; the one
    started next sends them from its outbox, once each."""
    stack, me = pool, Sender(pool)
    lost = faults.fail_send(of_type("CreateVm"), times=1000)
    vms = ["r0", "r1", "r2"]
    for vm in vms:
        await me.send(PlaceVm(vm=vm, priority=Owner.LOW, cpu=1, mem_mib=GIB))
    await count(stack, "VmPlaced", 3)
    await eventually(lambda: lost.hits >= 1, what="a lost CreateVm")
    await stack.stop("scheduler-low")
    lost.times = lost.hits
    await stack.start("scheduler-low")
    await placed_and_created(stack, vms)
    await assert_exactly_once(stack, me.ids)
    assert len(await stack.of_type("VmCreated")) == 3


async def test_every_command_is_answered_once_across_dropped_connections(
    pool: Stack, faults: Faults
) -> None:
    """The connection drops three times while VMs are placed and migrated: every call
    fails and nothing is delivered for a while; afterwards every VM is placed and
    created once and every command answered once."""
    stack, me = pool, Sender(pool)
    vms = [f"d{i}" for i in range(6)]
    for i, vm in enumerate(vms):
        await me.send(PlaceVm(vm=vm, priority=Owner.LOW, cpu=1, mem_mib=GIB))
        if i % 2 == 0:
            faults.drop(0.5)
            await eventually(lambda: not faults.dropped, what="the connection back")
    where = await placed_and_created(stack, vms)
    faults.drop(0.5)
    target = next(h for h in ("h1", "h2", "h3") if h != where["d0"])
    await me.send(MigrateVm(vm="d0", priority=Owner.LOW, target=target))
    await count(stack, "MigrationCompleted", 1)
    await assert_exactly_once(stack, me.ids)
    assert sorted(e.data.vm for e in await stack.of_type("VmCreated")) == vms  # type: ignore[attr-defined]


@pytest.fixture
async def tenants(broker: Broker, faults: Faults) -> AsyncIterator[Stack]:
    async with service_stack(
        2,
        connect=broker.connect,
        namespace=broker.namespace,
        faults=faults,
        tenants=True,
        monitor=True,
        settings={**QUIET, "tick_seconds": 0.1, "speed": 10.0},
    ) as stack:
        yield stack


async def test_tenants_ask_for_each_worker_once_and_finish_the_job_once(
    tenants: Stack, faults: Faults
) -> None:
    """CreateCluster's answer lands unacknowledged; the reconcile loop's asks for workers
    land unacknowledged once and one PlaceVm is lost on its way; SubmitJob's answer is
    lost before it lands. Each worker is placed once and the job completes once."""
    stack, me = tenants, Sender(tenants)
    created = faults.fail_append(of_type("ClusterCreated"), landed=True)
    asks = faults.fail_append(of_type("PlaceVm"), landed=True)
    place = faults.fail_send(of_type("PlaceVm"))
    await me.send(CreateCluster(cluster="t", workers=3, max_workers=3, worker_cpu=2))
    workers = await count(stack, "VmCreated", 3)
    for rule, what in ((created, "ClusterCreated"), (asks, "PlaceVm"), (place, "PlaceVm")):
        await hit(rule, what)
    assert sorted(w.vm for w in workers) == ["t-w0", "t-w1", "t-w2"]

    submitted = faults.fail_append(of_type("JobSubmitted"))
    await me.send(SubmitJob(cluster="t", job="j", maps=6, reduces=1, map_cpu_seconds=1))
    await count(stack, "JobCompleted", 1)
    await hit(submitted, "JobSubmitted")
    await assert_exactly_once(stack, me.ids)
    assert len(await stack.of_type("JobCompleted")) == 1
    assert len(await stack.of_type("VmCreated")) == 3


async def test_the_monitor_shrinks_a_cluster_once_through_lost_appends_and_sends(
    tenants: Stack, faults: Faults
) -> None:
    """A noisy VM contends a host: the detection and its scaling decision are lost before
    they land, then land unacknowledged; ScaleCluster is lost on its way once. The
    monitor detects once, decides once, and the cluster shrinks once."""
    stack, me = tenants, Sender(tenants)
    await me.send(
        CreateCluster(cluster="batch", workers=4, min_workers=1, max_workers=4, worker_cpu=4)
    )
    workers = await count(stack, "VmCreated", 4)
    host = Counter(w.host for w in workers).most_common(1)[0][0]
    # One append holds both: the first attempt is lost, the second lands unacknowledged.
    decided = faults.fail_append(of_type("ScalingDecided"))
    detected = faults.fail_append(of_type("ContentionDetected"), landed=True)
    scale = faults.fail_send(of_type("ScaleCluster"))
    on_host = PlacementRules(host_affinity=Affinity(must=[host]))
    noisy = PlaceVm(
        vm="noisy",
        priority=Owner.LOW,
        cpu=24,  # within the host's reservable 38,400 MHz, far over its 16 cores
        mem_mib=2048,
        workload=WorkloadKind.NOISY,
        rules=on_host,
    )
    await me.send(noisy)

    def by_contention(data: Any) -> bool:
        return isinstance(data, ClusterScaled) and "contention" in data.reason

    await count(stack, "ClusterScaled", 1, by_contention)
    for rule, what in (
        (detected, "ContentionDetected"),
        (decided, "ScalingDecided"),
        (scale, "ScaleCluster"),
    ):
        await hit(rule, what)
    await assert_exactly_once(stack, me.ids)
    assert len(await stack.of_type("ContentionDetected")) == 1
    assert len(await stack.of_type("ScalingDecided")) == 1
    assert len(await count(stack, "ClusterScaled", 1, by_contention)) == 1


async def test_every_service_rides_out_a_connection_dropped_for_seconds(
    tenants: Stack, faults: Faults
) -> None:
    """The connection drops for three seconds, longer than MAX_FAILURES failed steps of a
    loop take: no service stops; the workers asked for before the drop are placed once
    and a job submitted after it completes once."""
    stack, me = tenants, Sender(tenants)
    await me.send(CreateCluster(cluster="t", workers=2, max_workers=2, worker_cpu=2))
    faults.drop(3.0)
    await eventually(lambda: not faults.dropped, timeout=10, what="the connection back")
    telemetry = stack.running["hosts"].runtime.loop_stats["telemetry"]
    assert telemetry.failures >= MAX_FAILURES
    await count(stack, "VmCreated", 2)
    await me.send(SubmitJob(cluster="t", job="j", maps=4, map_cpu_seconds=1))
    await count(stack, "JobCompleted", 1)
    await assert_exactly_once(stack, me.ids)
    assert len(await stack.of_type("VmCreated")) == 2
