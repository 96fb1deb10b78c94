"""Scratch space on the hosts: the pool's accounting, its bytes' isolation, the fold that
reclaims a departed VM's space, the typed rejections, and the telemetry that shows it."""

from __future__ import annotations

from functools import reduce

import pytest

from schemas import Command, Envelope, Event
from schemas.host import CrashHost, HostRegistered
from schemas.scratch import AllocateScratch, ReleaseScratch, ScratchAllocated, ScratchReleased
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import MigrationCompleted, MigrationStarted
from schemas.vm import CreateVm, DestroyVm, PowerOffVm
from services.hosts.domain import decide
from services.hosts.scratch import (
    BLOCK,
    MIB,
    AccessDenied,
    NoRoom,
    NotHeld,
    ScratchDisk,
    ScratchPool,
)
from services.hosts.state import Fleet, evolve
from tests.reserving import reserved
from tests.unit.test_hosts_machine import Harness

# A small pool: each VM's default quota is a quarter of it, 250 MiB.
POOL = 1000


def host(name: str = "h1") -> HostRegistered:
    return HostRegistered(host=name, cpu_cores=4, cpu_mhz=2000, mem_mib=4096, scratch_mib=POOL)


def pool_of(*grants: tuple[str, str, int]) -> ScratchPool:
    pool = ScratchPool(POOL)
    for vm, tag, mib in grants:
        pool = pool.allocate(vm, tag, mib)
    return pool


# The pool, pure


def test_allocations_take_numbered_extents_and_count_per_vm_and_pool() -> None:
    """Each allocation is a new extent, numbered in order; a VM's use and the pool's add up."""
    pool = pool_of(("a", "map", 100), ("b", "map", 50), ("a", "spill", 30))
    assert [(e.id, e.vm, e.tag, e.mib) for e in pool.extents.values()] == [
        (0, "a", "map", 100),
        (1, "b", "map", 50),
        (2, "a", "spill", 30),
    ]
    assert (pool.used("a"), pool.used("b"), pool.used_mib, pool.free_mib) == (130, 50, 180, 820)
    assert pool.by_vm() == {"a": 130, "b": 50}


def test_a_vm_gets_a_quarter_of_the_pool_unless_it_sets_a_quota() -> None:
    """Past the default quota an allocation is refused; one that sets a larger quota (at
    most the pool) passes, and the VM keeps that quota for its later allocations."""
    pool = pool_of(("a", "map", 250))
    with pytest.raises(NoRoom, match="250 MiB quota"):
        pool.allocate("a", "map", 1)
    pool = pool.allocate("a", "map", 100, quota_mib=600)
    assert (pool.quota("a"), pool.quota("b")) == (600, 250)
    pool = pool.allocate("a", "spill", 250)
    with pytest.raises(NoRoom, match="600 MiB quota"):
        pool.allocate("a", "spill", 1)
    with pytest.raises(NoRoom, match="more than the pool"):
        pool.allocate("a", "spill", 1, quota_mib=POOL + 1)


def test_quotas_may_overcommit_but_the_pool_may_not() -> None:
    """Two VMs may each be allowed most of the pool; the second is refused what is not free."""
    pool = ScratchPool(POOL).allocate("a", "job", 700, quota_mib=800)
    with pytest.raises(NoRoom, match="300 MiB free"):
        pool.allocate("b", "job", 301, quota_mib=800)
    assert pool.allocate("b", "job", 300, quota_mib=800).free_mib == 0


def test_release_frees_a_tag_or_all_and_refuses_what_is_not_held() -> None:
    """Releasing a tag frees only its extents; releasing with no tag frees the rest; a
    tag the VM does not hold (even another VM's) is refused."""
    pool = pool_of(("a", "map", 100), ("a", "map", 20), ("a", "spill", 30), ("b", "map", 40))
    with pytest.raises(NotHeld):
        pool.release("a", "reduce")
    pool, freed = pool.release("a", "map")
    assert (freed, pool.used("a"), pool.used("b")) == (120, 30, 40)
    pool, freed = pool.release("a")
    assert (freed, pool.used("a"), pool.used_mib) == (30, 0, 40)
    with pytest.raises(NotHeld):
        pool.release("a")


def test_extent_numbers_are_never_reused() -> None:
    """A freed extent's number is not given again, so stale addresses point nowhere."""
    pool, _ = pool_of(("a", "map", 100)).release("a")
    assert list(pool.allocate("a", "map", 100).extents) == [1]


def test_reclaim_frees_all_and_forgets_the_quota() -> None:
    """A VM that leaves the host gives back its space and its quota."""
    pool = ScratchPool(POOL).allocate("a", "map", 500, quota_mib=600).reclaim("a")
    assert (pool.used_mib, pool.quota("a"), dict(pool.quotas)) == (0, 250, {})
    assert pool.reclaim("a") is pool


# The bytes, isolated


def test_a_vm_reads_back_what_it_wrote_across_blocks_and_zeros_elsewhere() -> None:
    """Bytes written over a block boundary read back exactly; unwritten space is zeros."""
    pool, disk = pool_of(("a", "map", 10)), ScratchDisk()
    data = bytes(range(256)) * 1024
    disk.write(pool, "a", 0, BLOCK - 100, data)
    assert disk.read(pool, "a", 0, BLOCK - 100, len(data)) == data
    assert disk.read(pool, "a", 0, 10 * MIB - 8, 8) == bytes(8)
    assert disk.real_bytes == 5 * BLOCK


def test_a_vm_cannot_read_or_write_another_vms_extent() -> None:
    """Another VM's extent is refused for reading and writing, worded as if it did not
    exist, and its bytes are unchanged."""
    pool, disk = pool_of(("a", "map", 10), ("b", "map", 10)), ScratchDisk()
    disk.write(pool, "a", 0, 0, b"secret")
    with pytest.raises(AccessDenied, match="holds no scratch extent 0") as read:
        disk.read(pool, "b", 0, 0, 6)
    with pytest.raises(AccessDenied) as write:
        disk.write(pool, "b", 0, 0, b"XXXXXX")
    with pytest.raises(AccessDenied) as missing:
        disk.read(pool, "b", 7, 0, 6)
    assert str(read.value) == str(write.value) == str(missing.value).replace("7", "0")
    assert disk.read(pool, "a", 0, 0, 6) == b"secret"


def test_access_outside_the_extent_is_refused() -> None:
    """A VM cannot reach past its extent's end into the next one, nor before its start."""
    pool, disk = pool_of(("a", "map", 1), ("a", "map", 1)), ScratchDisk()
    with pytest.raises(AccessDenied, match="outside extent 0"):
        disk.write(pool, "a", 0, MIB - 2, b"abc")
    with pytest.raises(AccessDenied):
        disk.read(pool, "a", 0, -1, 1)
    assert disk.real_bytes == 0


def test_a_released_extent_is_unreachable_and_a_new_one_starts_zeroed() -> None:
    """After release the old extent is refused; the next one (another number) reads zeros."""
    disk = ScratchDisk()
    pool = pool_of(("a", "map", 1))
    disk.write(pool, "a", 0, 0, b"old")
    released, _ = pool.release("a")
    with pytest.raises(AccessDenied):
        disk.read(released, "a", 0, 0, 3)
    fresh = released.allocate("b", "map", 1)
    assert disk.read(fresh, "b", 1, 0, 3) == bytes(3)


def test_the_real_bytes_are_capped_and_a_refused_write_changes_nothing() -> None:
    """Past the cap a write that needs new blocks is refused whole; written blocks stay
    writable."""
    pool, disk = pool_of(("a", "map", 10)), ScratchDisk(max_bytes=2 * BLOCK)
    disk.write(pool, "a", 0, 0, b"x" * BLOCK)
    with pytest.raises(NoRoom, match="real bytes"):
        disk.write(pool, "a", 0, BLOCK - 1, b"yy" + b"z" * BLOCK)
    assert disk.read(pool, "a", 0, BLOCK - 1, 2) == b"x\0"
    disk.write(pool, "a", 0, 5 * BLOCK, b"y")
    disk.write(pool, "a", 0, 0, b"w" * BLOCK)
    assert disk.real_bytes == 2 * BLOCK


# Deciding and folding


def fleet_of(*events: Event) -> Fleet:
    return reduce(evolve, events, Fleet())


def with_vms() -> Fleet:
    """h1 with VMs a and b, h2 with VM c."""
    fleet = fleet_of(host("h1"), host("h2"))
    for vm, h in (("a", "h1"), ("b", "h1"), ("c", "h2")):
        fleet = apply(fleet, CreateVm(vm=vm, cpu=1, mem_mib=64, host=h))
    return fleet


def run(fleet: Fleet, cmd: Command) -> list[Event]:
    return decide(fleet, Envelope.wrap(cmd, producer="test"))


def apply(fleet: Fleet, cmd: Command) -> Fleet:
    """``cmd`` decided and folded, after the reservation its scheduler would make."""
    fleet = reserved(fleet, cmd)
    events = run(fleet, cmd)
    assert not any(isinstance(e, CommandRejected) for e in events), events
    return reduce(evolve, events, fleet)


def code(fleet: Fleet, cmd: Command) -> RejectionCode:
    [event] = run(fleet, cmd)
    assert isinstance(event, CommandRejected), event
    return event.code


def alloc(vm: str, mib: int, tag: str = "job", h: str = "h1", **extra: int) -> AllocateScratch:
    return AllocateScratch.model_validate({"host": h, "vm": vm, "tag": tag, "mib": mib, **extra})


def test_allocation_and_release_answer_with_the_new_totals() -> None:
    """ScratchAllocated tells the extent, the quota, the VM's and the pool's use; the
    fold keeps the same; ScratchReleased tells what was freed."""
    fleet = apply(with_vms(), alloc("a", 100))
    [allocated] = run(fleet, alloc("b", 200, quota_mib=400))
    assert allocated == ScratchAllocated(
        host="h1",
        vm="b",
        tag="job",
        mib=200,
        extent=1,
        quota_mib=400,
        used_mib=200,
        pool_used_mib=300,
    )
    fleet = evolve(fleet, allocated)
    assert fleet.hosts["h1"].scratch == pool_of(("a", "job", 100)).allocate("b", "job", 200, 400)
    [released] = run(fleet, ReleaseScratch(host="h1", vm="a"))
    assert released == ScratchReleased(host="h1", vm="a", tag=None, mib=100, pool_used_mib=200)
    assert evolve(fleet, released).hosts["h1"].scratch.by_vm() == {"b": 200}


@pytest.mark.parametrize(
    ("cmd", "expected"),
    [
        (alloc("a", 10, h="h9"), RejectionCode.UNKNOWN_HOST),
        (alloc("zz", 10), RejectionCode.UNKNOWN_VM),
        (alloc("c", 10), RejectionCode.UNKNOWN_VM),
        (alloc("b", 251), RejectionCode.INSUFFICIENT_CAPACITY),
        (alloc("a", 10, quota_mib=POOL + 1), RejectionCode.INSUFFICIENT_CAPACITY),
        (alloc("b", 901, quota_mib=POOL), RejectionCode.INSUFFICIENT_CAPACITY),
        (ReleaseScratch(host="h1", vm="a", tag="other"), RejectionCode.WRONG_STATE),
        (ReleaseScratch(host="h1", vm="b"), RejectionCode.WRONG_STATE),
        (ReleaseScratch(host="h9", vm="a"), RejectionCode.UNKNOWN_HOST),
        (ReleaseScratch(host="h2", vm="a"), RejectionCode.UNKNOWN_VM),
    ],
)
def test_rejects_with_a_typed_code(cmd: Command, expected: RejectionCode) -> None:
    """Unknown host or VM, a VM on another host, over quota or pool, and a release of space
    the VM does not hold are each refused with their code; nothing changes."""
    fleet = apply(with_vms(), alloc("a", 100, quota_mib=POOL))
    assert code(fleet, cmd) == expected


def test_rejects_scratch_commands_on_a_host_that_is_down() -> None:
    """A crashed host takes no allocation or release; the space it held stays held."""
    fleet = apply(apply(with_vms(), alloc("a", 100)), CrashHost(host="h1"))
    assert code(fleet, alloc("a", 10)) == RejectionCode.HOST_DOWN
    assert code(fleet, ReleaseScratch(host="h1", vm="a")) == RejectionCode.HOST_DOWN
    assert fleet.hosts["h1"].scratch.used("a") == 100


def test_a_destroyed_vm_leaves_no_space_or_quota_behind() -> None:
    """VmDestroyed frees the VM's space on its host; its neighbour's stays."""
    fleet = apply(apply(with_vms(), alloc("a", 100, quota_mib=500)), alloc("b", 50))
    fleet = apply(apply(fleet, PowerOffVm(vm="a", host="h1")), DestroyVm(vm="a", host="h1"))
    assert fleet.hosts["h1"].scratch.by_vm() == {"b": 50}
    assert "a" not in fleet.hosts["h1"].scratch.quotas


def test_a_migrated_vm_leaves_its_space_on_the_source_and_starts_empty() -> None:
    """MigrationCompleted frees the VM's space on the source; on the target it holds none
    and has the default quota. An aborted or unfinished migration frees nothing."""
    fleet = apply(with_vms(), alloc("a", 100, quota_mib=500))
    fleet = evolve(
        fleet, MigrationStarted(migration="m", vm="a", source="h1", target="h2", expected_seconds=1)
    )
    assert fleet.hosts["h1"].scratch.used("a") == 100
    fleet = evolve(fleet, MigrationCompleted(migration="m", vm="a", source="h1", target="h2"))
    assert fleet.hosts["h1"].scratch.extents == {}
    assert code(fleet, alloc("a", 10)) == RejectionCode.UNKNOWN_VM
    [allocated] = run(fleet, alloc("a", 10, h="h2"))
    assert isinstance(allocated, ScratchAllocated)
    assert (allocated.used_mib, allocated.quota_mib) == (10, 250)


def test_old_host_registrations_decode_with_the_default_pool() -> None:
    """A HostRegistered logged before scratch existed decodes with a 200 GiB pool."""
    old = HostRegistered.model_validate_json(
        '{"host": "h1", "cpu_cores": 4, "cpu_mhz": 2000, "mem_mib": 4096}'
    )
    assert fleet_of(old).hosts["h1"].scratch.capacity_mib == 200 * 1024


# The machine and its telemetry


def test_telemetry_shows_the_pool_and_each_vms_space() -> None:
    """A host's sample carries the pool's capacity and use, and each VM's space."""
    h = Harness(host())
    for vm in ("a", "b"):
        h.do(CreateVm(vm=vm, cpu=1, mem_mib=64, host="h1"))
    h.do(alloc("a", 100))
    h.do(alloc("b", 30))
    sample = h.tick()["h1"]
    assert (sample.scratch_capacity_mib, sample.scratch_used_mib) == (POOL, 130)
    assert {v.vm: v.scratch_mib for v in sample.vms} == {"a": 100, "b": 30}
    h.do(ReleaseScratch(host="h1", vm="a"))
    assert h.tick()["h1"].scratch_used_mib == 30


@pytest.mark.parametrize("leave", ["release", "destroy", "migrate"])
def test_the_machine_lets_freed_bytes_go(leave: str) -> None:
    """The bytes of extents freed by a release, a destroy or a migration away are dropped."""
    h = Harness(host("h1"), host("h2"))
    h.do(CreateVm(vm="a", cpu=1, mem_mib=64, host="h1", power_on=False))
    h.do(alloc("a", 1))
    disk = h.machine.scratch["h1"]
    disk.write(h.fleet.hosts["h1"].scratch, "a", 0, 0, b"data")
    assert disk.real_bytes == BLOCK
    match leave:
        case "release":
            h.do(ReleaseScratch(host="h1", vm="a", tag="job"))
        case "destroy":
            h.do(DestroyVm(vm="a", host="h1"))
        case _:
            h.fold(MigrationCompleted(migration="m", vm="a", source="h1", target="h2"))
    assert disk.real_bytes == 0
