"""VMs' disks on the shared datastore, as the hosts use them: guests read and write real
blocks each tick, telemetry counts them, the disk outlives a restart of the process and
goes with its VM, and a full datastore takes no new VM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas import Command, Envelope, Event
from schemas.host import HostRegistered, HostTelemetry
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, DestroyVm, MemoryMode, PowerOffVm, VmCreated
from services.hosts.disks import BLOCKS_PER_GIB, GIB, READS_PER_TICK, WRITES_PER_TICK, Disks
from services.hosts.domain import decide
from services.hosts.machine import Machine
from services.hosts.state import Fleet, evolve
from services.hosts.storage.datastore import Datastore
from tests.reserving import covering

HOST = HostRegistered(host="h1", cpu_cores=4, cpu_mhz=2000, mem_mib=8192)


class Harness:
    """A fleet and its machine over a datastore, driven the way the service drives them."""

    def __init__(self, root: Path | None, capacity_gib: float = 8) -> None:
        self.fleet = Fleet()
        self.machine = Machine([HOST.host], Disks(root, int(capacity_gib * GIB)))
        self.ticks = 0
        self.log: list[Event] = []
        self.fold(HOST)

    def fold(self, event: Event) -> None:
        before = self.fleet
        self.fleet = evolve(before, event)
        self.machine.apply(before, event)
        self.log.append(event)

    def do(self, cmd: Command) -> list[Event]:
        if (held := covering(self.fleet, cmd)) is not None:
            self.fold(held)
        events = decide(
            self.fleet, Envelope.wrap(cmd, producer="test"), self.machine.facts(self.fleet)
        )
        for event in events:
            self.fold(event)
        return events

    def tick(self) -> HostTelemetry:
        self.ticks += 1
        [out] = self.machine.tick(self.fleet, self.ticks, sim_time=float(self.ticks), tick_s=1.0)
        return out


def guest(vm: str = "db", mode: MemoryMode = MemoryMode.FULL, disk_gib: int = 2) -> CreateVm:
    return CreateVm(
        vm=vm, cpu=1, mem_mib=64, host="h1", memory_mode=mode, disk_gib=disk_gib, seed=7
    )


def test_a_guest_reads_and_writes_real_blocks_of_its_disk_each_tick(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    [created] = h.do(guest())
    assert isinstance(created, VmCreated)
    assert created.disk_gib == 2
    h.tick()
    h.tick()
    telemetry = h.tick()
    [sample] = telemetry.vms
    assert sample.disk_gib == 2
    # Last tick's I/O, per emulated second (ticks of 1 s): the guest ran alone, at full speed.
    assert sample.disk_read_iops == READS_PER_TICK
    assert 0 < sample.disk_write_iops <= WRITES_PER_TICK
    assert telemetry.datastore_capacity_gib == 8
    assert telemetry.datastore_used_gib > 0

    disk = Datastore(tmp_path, 8 * GIB).open_disk("db")
    assert disk.spec.blocks == 2 * BLOCKS_PER_GIB
    assert disk.spec.template == "linux"
    assert disk.spec.seed == 7
    assert 0 < disk.written() <= 3 * WRITES_PER_TICK


def test_a_guest_s_disk_io_is_storage_demand_on_its_host(tmp_path: Path) -> None:
    """The same guest with and without a disk: the disk's reads and writes are added to
    what its workload profile asks of the host's storage."""
    with_disk, without = Harness(tmp_path), Harness(None)
    for h in (with_disk, without):
        h.do(guest())
        h.tick()
        h.tick()
    [on] = with_disk.tick().vms
    [off] = without.tick().vms
    added = on.disk_read_iops * 4096 / 1e6
    assert on.storage_read_mbs == pytest.approx(off.storage_read_mbs + added, abs=0.01)
    assert off.disk_read_iops == 0


def test_a_sizes_only_guest_s_disk_costs_the_datastore_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.do(guest(mode=MemoryMode.ACCOUNTING, disk_gib=64))
    for _ in range(3):
        telemetry = h.tick()
    [sample] = telemetry.vms
    assert (sample.disk_gib, sample.disk_read_iops, sample.disk_write_iops) == (64, 0, 0)
    assert telemetry.datastore_used_gib == 0
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.vdisk"))


def test_the_disk_outlives_a_restart_of_the_process_and_goes_with_its_vm(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.do(guest(disk_gib=1))
    h.tick()
    h.tick()
    h.do(PowerOffVm(vm="db", host="h1"))
    before = Datastore(tmp_path, 8 * GIB).open_disk("db").checksum()

    # A new process folds the same log over the same datastore: the disk is the one the
    # guest wrote, not a new one.
    again = Harness(tmp_path)
    for event in h.log[1:]:
        again.fold(event)
    assert again.machine.disks.disk("db").checksum() == before

    again.do(DestroyVm(vm="db", host="h1"))
    assert not list(tmp_path.rglob("db.vdisk*"))
    assert again.tick().datastore_used_gib < 0.001


def test_a_full_datastore_takes_no_new_vm_and_nothing_changes(tmp_path: Path) -> None:
    h = Harness(tmp_path, capacity_gib=8 / 1024)  # 8 MiB: less than a disk needs to start
    [refused] = h.do(guest())
    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.DATASTORE_FULL
    assert "datastore" in refused.reason
    assert "db" not in h.fleet.vms


def test_blocks_a_guest_reads_are_mapped_in_its_pages_until_page_or_block_is_written(
    tmp_path: Path,
) -> None:
    """Each mapped page holds exactly the bytes of the block it names; a mapping goes when
    the guest writes the page, or writes the block."""
    h = Harness(tmp_path)
    h.do(guest())
    for _ in range(4):
        h.tick()
    cache = h.machine.page_caches.vms["db"]
    mapping = cache.mapping()
    assert 0 < len(mapping) <= 4 * READS_PER_TICK
    mem, disk = h.machine.memory["h1"], h.machine.disks.disk("db")
    for page, (name, block) in mapping.items():
        assert name == "db"
        assert mem.read("db", page) == disk.read([block]).tobytes()

    page, (_, block) = next(iter(mapping.items()))
    cache.pages_written(np.asarray([page]))
    assert page not in cache.mapping()
    others = [p for p, (_, b) in cache.mapping().items() if b != block]
    if others:
        victim = others[0]
        cache.blocks_written("db", np.asarray([cache.mapping()[victim][1]]))
        assert victim not in cache.mapping()
    # A block written to another disk (a child, after a checkpoint) leaves these alone.
    before = cache.mapping()
    cache.blocks_written("db.c1", np.asarray([b for _, b in before.values()]))
    assert cache.mapping() == before
