"""Checkpoints as the hosts take them: the VM stops only to switch its disk and mark its
memory copy-on-write, the save then writes memory as it was at the stop although the
guest writes on, a restore brings memory and disk back exactly, a save cut short by a
restart never looks complete, and every bad request is refused with nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from schemas import Command, Envelope, Event
from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointDamaged,
    CheckpointDeleted,
    CheckpointFailed,
    CheckpointStarted,
    CheckpointVm,
    DeleteCheckpoint,
    RestoreVm,
    VmRestored,
)
from schemas.host import CrashHost, HostRegistered
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, MemoryMode, PowerOffVm, PowerOnVm, VmCreated
from services.hosts.checkpoint_files import checkpoint_path
from services.hosts.disks import GIB, Disks
from services.hosts.domain import decide
from services.hosts.machine import Machine
from services.hosts.state import Fleet, evolve
from services.hosts.storage.datastore import Datastore
from tests.reserving import covering

HOSTS = [HostRegistered(host=h, cpu_cores=4, cpu_mhz=2000, mem_mib=8192) for h in ("h1", "h2")]


class Stack:
    """One log folded by one or more hosts processes (machines) over one datastore."""

    def __init__(self, root: Path, *machines: list[str], capacity_gib: float = 8) -> None:
        self.root, self.capacity = root, int(capacity_gib * GIB)
        self.fleet = Fleet()
        self.machines = [Machine(hosts, Disks(root, self.capacity)) for hosts in machines]
        self.log: list[Event] = []
        self.ticks = 0
        for host in HOSTS:
            self.fold(host)

    def fold(self, event: Event) -> None:
        before = self.fleet
        self.fleet = evolve(before, event)
        for machine in self.machines:
            machine.apply(before, event)
        self.log.append(event)

    def do(self, cmd: Command, by: int = 0) -> list[Event]:
        if (held := covering(self.fleet, cmd)) is not None:
            self.fold(held)
        facts = self.machines[by].facts(self.fleet)
        events = decide(self.fleet, Envelope.wrap(cmd, producer="test"), facts)
        for event in events:
            self.fold(event)
        return events

    def tick(self) -> None:
        self.ticks += 1
        for machine in self.machines:
            machine.tick(self.fleet, self.ticks, sim_time=float(self.ticks), tick_s=1.0)

    def save(self, by: int = 0, *, ticks_between: bool = True, limit: int = 500) -> Event:
        """Run the save loop (and the guests, between its steps) until it ends."""
        for _ in range(limit):
            if ticks_between:
                self.tick()
            if ended := self.machines[by].checkpoints.step(self.fleet):
                [event] = ended
                self.fold(event)
                return event
        raise AssertionError("the save did not end")

    def memory(self, vm: str, by: int = 0) -> str:
        host = self.fleet.vms[vm].host
        return self.machines[by].memory[host].checksum(vm)

    def disk(self, name: str) -> str:
        return Datastore(self.root, self.capacity).open_disk(name).checksum()


def full_vm(vm: str = "db", host: str = "h1", mem_mib: int = 64) -> CreateVm:
    return CreateVm(
        vm=vm, cpu=1, mem_mib=mem_mib, host=host, memory_mode=MemoryMode.FULL, disk_gib=1, seed=5
    )


def refused(events: list[Event]) -> RejectionCode:
    [event] = events
    assert isinstance(event, CommandRejected), event
    return event.code


def test_the_save_writes_memory_as_it_was_at_the_stop_and_a_restore_brings_it_back(
    tmp_path: Path,
) -> None:
    s = Stack(tmp_path, ["h1"])
    s.machines[0].checkpoints.step_pages = 1024  # 4 MiB a step: the guest writes in between
    s.do(full_vm())
    for _ in range(3):
        s.tick()
    [started] = s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    assert isinstance(started, CheckpointStarted)
    assert (started.disk, started.child_disk) == ("db", "db.c1")
    memory_then, disk_then = s.memory("db"), s.disk("db")

    done = s.save()
    assert isinstance(done, CheckpointCompleted)
    assert done.memory_checksum == memory_then
    # The guest wrote on during the save: its memory moved, and what it wrote first was
    # copied aside.
    assert s.memory("db") != memory_then
    assert done.pages_copied_aside > 0
    assert done.stun_ms < 100
    assert checkpoint_path(Datastore(tmp_path, GIB), "c1").exists()
    assert not list(tmp_path.rglob(".*.tmp"))
    # The checkpoint's disk is frozen; the guest wrote its child.
    assert s.disk("db") == disk_then
    assert s.fleet.vms["db"].active_disk == "db.c1"

    s.do(PowerOffVm(vm="db", host="h1"))
    [restored] = s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))
    assert isinstance(restored, VmRestored)
    assert s.memory("db") == memory_then == restored.memory_checksum
    assert s.fleet.vms["db"].active_disk == restored.disk
    assert s.disk(restored.disk) == disk_then
    # It runs on from the checkpoint: its disk takes its writes, the checkpoint's does not.
    s.do(PowerOnVm(vm="db", host="h1"))
    s.tick()
    s.tick()
    assert s.disk("db") == disk_then
    assert s.disk(restored.disk) != disk_then


def test_checkpoints_in_a_row_make_a_chain_and_each_restores_its_own_instant(
    tmp_path: Path,
) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    instants: dict[str, tuple[str, str]] = {}
    for name in ("c1", "c2", "c3"):
        s.tick()
        s.tick()
        [started] = s.do(CheckpointVm(vm="db", host="h1", checkpoint=name))
        assert isinstance(started, CheckpointStarted)
        instants[name] = (s.memory("db"), s.disk(started.disk))
        assert isinstance(s.save(), CheckpointCompleted)
    assert s.fleet.vms["db"].active_disk == "db.c3"
    assert s.fleet.disk_parents == {"db.c1": "db", "db.c2": "db.c1", "db.c3": "db.c2"}

    s.do(PowerOffVm(vm="db", host="h1"))
    for name in ("c2", "c1", "c3"):
        [restored] = s.do(RestoreVm(vm="db", host="h1", checkpoint=name))
        assert isinstance(restored, VmRestored)
        assert (s.memory("db"), s.disk(restored.disk)) == instants[name]


def test_a_checkpoint_is_restored_by_another_hosts_process(tmp_path: Path) -> None:
    """Saved by the process of h1, restored into a VM of h2 by the process of h2: the
    datastore and the log are all they share."""
    s = Stack(tmp_path, ["h1"], ["h2"])
    s.do(full_vm("a", "h1"))
    s.tick()
    s.do(CheckpointVm(vm="a", host="h1", checkpoint="gold"))
    memory_then = s.memory("a")
    assert isinstance(s.save(by=0), CheckpointCompleted)

    s.do(full_vm("b", "h2"), by=1)
    s.do(PowerOffVm(vm="b", host="h2"), by=1)
    [restored] = s.do(RestoreVm(vm="b", host="h2", checkpoint="gold"), by=1)
    assert isinstance(restored, VmRestored)
    assert s.memory("b", by=1) == memory_then


def test_a_save_cut_short_by_a_restart_is_told_failed_and_leaves_no_file(tmp_path: Path) -> None:
    s = Stack(tmp_path, ["h1"])
    s.machines[0].checkpoints.step_pages = 1024
    s.do(full_vm())
    s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    assert not s.machines[0].checkpoints.step(s.fleet)  # a piece written, then the kill
    assert list(tmp_path.rglob(".c1.vmstate.tmp"))

    again = Stack(tmp_path, ["h1"])
    again.machines[0].live = False
    for event in s.log[len(HOSTS) :]:
        again.fold(event)
    again.machines[0].live = True
    [failed] = again.machines[0].checkpoints.step(again.fleet)
    assert isinstance(failed, CheckpointFailed)
    assert "stopped before the save finished" in failed.reason
    again.fold(failed)
    assert not list(tmp_path.rglob("*c1.vmstate*"))
    assert again.fleet.checkpoints["c1"].state == "failed"
    # The VM writes the child it was switched to, as before the restart.
    assert again.fleet.vms["db"].active_disk == "db.c1"
    again.do(PowerOffVm(vm="db", host="h1"))
    assert refused(again.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))) == "wrong-state"


def test_deleting_a_checkpoint_merges_the_vm_s_disk_back_into_it(tmp_path: Path) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    s.save()
    s.tick()
    written = s.disk("db.c1")
    [deleted] = s.do(DeleteCheckpoint(checkpoint="c1", host="h1"))
    assert isinstance(deleted, CheckpointDeleted)
    assert s.fleet.vms["db"].active_disk == "db"
    assert s.disk("db") == written
    assert not list(tmp_path.rglob("db.c1.vdisk*"))
    assert not checkpoint_path(Datastore(tmp_path, GIB), "c1").exists()
    assert "c1" not in s.fleet.checkpoints


def test_bad_checkpoint_requests_are_refused_and_change_nothing(tmp_path: Path) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    s.do(full_vm("big", mem_mib=128))
    s.do(CreateVm(vm="sizes", cpu=1, mem_mib=64, host="h1", disk_gib=1))
    s.tick()
    assert refused(s.do(CheckpointVm(vm="ghost", host="h1", checkpoint="x"))) == "unknown-vm"
    assert refused(s.do(CheckpointVm(vm="sizes", host="h1", checkpoint="x"))) == "accounting-only"
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    assert refused(s.do(CheckpointVm(vm="db", host="h1", checkpoint="c2"))) == "wrong-state"
    s.save()
    assert refused(s.do(CheckpointVm(vm="big", host="h1", checkpoint="c1"))) == "already-exists"

    assert refused(s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))) == "wrong-state"
    s.do(PowerOffVm(vm="big", host="h1"))
    assert refused(s.do(RestoreVm(vm="big", host="h1", checkpoint="c1"))) == "size-mismatch"
    s.do(PowerOffVm(vm="db", host="h1"))
    assert refused(s.do(RestoreVm(vm="db", host="h1", checkpoint="c9"))) == "unknown-checkpoint"

    # A restore makes a disk from the checkpoint's: the checkpoint cannot go while it is.
    s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))
    assert refused(s.do(DeleteCheckpoint(checkpoint="c1", host="h1"))) == "wrong-state"

    # A file that no longer reads back as written is refused, not restored.
    path = checkpoint_path(Datastore(tmp_path, GIB), "c1")
    with path.open("r+b") as f:
        f.seek(8192 + 4096 * 7 + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    events_before = len(s.log)
    assert refused(s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))) == "checkpoint-corrupt"
    assert len(s.log) == events_before + 1


def test_a_full_datastore_takes_no_checkpoint(tmp_path: Path) -> None:
    s = Stack(tmp_path, ["h1"], capacity_gib=0.05)  # 51 MiB: the VM, not its 64 MiB state
    s.do(full_vm())
    code = refused(s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1")))
    assert code == RejectionCode.DATASTORE_FULL
    assert not s.fleet.checkpoints


@pytest.mark.parametrize("checkpoint", ["c1"])
def test_the_checkpoints_of_a_vm_are_listed(tmp_path: Path, checkpoint: str) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    s.do(CheckpointVm(vm="db", host="h1", checkpoint=checkpoint))
    assert s.fleet.checkpoints[checkpoint].view().state == "saving"
    done = s.save()
    assert isinstance(done, CheckpointCompleted)
    view = s.fleet.checkpoints[checkpoint].view()
    assert (view.state, view.checksum, view.bytes) == ("complete", done.checksum, done.bytes)


def test_a_restarted_process_reads_back_its_checkpoints_and_tells_a_damaged_one(
    tmp_path: Path,
) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    for name in ("good", "bad", "gone"):
        s.do(CheckpointVm(vm="db", host="h1", checkpoint=name))
        s.save(ticks_between=False)
    store = Datastore(tmp_path, GIB)
    with checkpoint_path(store, "bad").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x01")
    checkpoint_path(store, "gone").unlink()

    again = Stack(tmp_path, ["h1"])
    again.machines[0].live = False
    for event in s.log[len(HOSTS) :]:
        again.fold(event)
    again.machines[0].live = True
    again.machines[0].checkpoints.check_files(again.fleet, ["h1"])
    told: list[Event] = []
    for _ in range(10):
        told += again.machines[0].checkpoints.step(again.fleet)
    damaged = {e.checkpoint: e.reason for e in told if isinstance(e, CheckpointDamaged)}
    assert set(damaged) == {"bad", "gone"}
    assert "reads back as" in damaged["bad"]
    assert "no file" in damaged["gone"]
    for event in told:
        again.fold(event)
    assert {n: c.state for n, c in again.fleet.checkpoints.items()} == {
        "good": "complete",
        "bad": "damaged",
        "gone": "damaged",
    }
    again.do(PowerOffVm(vm="db", host="h1"))
    assert refused(again.do(RestoreVm(vm="db", host="h1", checkpoint="bad"))) == "wrong-state"
    [restored] = again.do(RestoreVm(vm="db", host="h1", checkpoint="good"))
    assert isinstance(restored, VmRestored)


def test_checkpoints_are_counted_in_the_metrics(tmp_path: Path) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"host": "h1", **labels}) or 0.0

    before = (
        sample("vplane_checkpoints_total", outcome="complete"),
        sample("vplane_checkpoint_stun_seconds_count"),
    )
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    done = s.save(ticks_between=False)
    assert isinstance(done, CheckpointCompleted)
    after = (
        sample("vplane_checkpoints_total", outcome="complete"),
        sample("vplane_checkpoint_stun_seconds_count"),
    )
    assert after == (before[0] + 1, before[1] + 1)


def test_a_new_vm_is_made_from_a_checkpoint(tmp_path: Path) -> None:
    """`restore --as NEW`: a VM created from a checkpoint of its size starts with the
    checkpoint's memory, devices and a child of its disk, on another host too; one of
    another size, or of sizes-only memory, is refused."""
    s = Stack(tmp_path, ["h1"], ["h2"])
    s.do(full_vm())
    s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    memory_then, disk_then = s.memory("db"), s.disk("db")
    assert isinstance(s.save(), CheckpointCompleted)

    copy = full_vm("copy", "h2").model_copy(update={"checkpoint": "c1", "seed": 77})
    [created] = s.do(copy, by=1)
    assert isinstance(created, VmCreated)
    assert (created.checkpoint, created.seed) == ("c1", 5)
    assert s.memory("copy", by=1) == memory_then
    assert s.fleet.disk_parents["copy"] == "db"
    assert s.disk("copy") == disk_then

    bigger = full_vm("big", "h2", mem_mib=128).model_copy(update={"checkpoint": "c1"})
    assert refused(s.do(bigger, by=1)) == "size-mismatch"
    sizes = copy.model_copy(update={"vm": "sizes", "memory_mode": MemoryMode.ACCOUNTING})
    assert refused(s.do(sizes, by=1)) == "accounting-only"
    nowhere = copy.model_copy(update={"vm": "x", "checkpoint": "c9"})
    assert refused(s.do(nowhere, by=1)) == "unknown-checkpoint"


def test_a_checkpoint_that_copies_the_disk_gives_the_vm_its_own_disk_back(
    tmp_path: Path,
) -> None:
    """--copy-parent: the checkpoint keeps a copy of the disk as it was at the stop, and
    what the guest wrote meanwhile is merged back into its own disk, which it writes on."""
    s = Stack(tmp_path, ["h1"])
    s.machines[0].checkpoints.step_pages = 1024
    s.do(full_vm())
    for _ in range(3):
        s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1", copy_parent=True))
    memory_then, disk_then = s.memory("db"), s.disk("db")
    done = s.save()
    assert isinstance(done, CheckpointCompleted)
    assert (done.disk, done.vm_disk) == ("c1..copy", "db")
    assert done.disk_blocks_copied > 0
    assert s.fleet.vms["db"].active_disk == "db"
    assert s.fleet.disk_parents == {}
    assert not list(tmp_path.rglob("db.c1.vdisk*"))
    # The copy is the disk at the stop; the VM's own disk has moved on since.
    assert s.disk("c1..copy") == disk_then
    assert s.disk("db") != disk_then
    s.tick()

    s.do(PowerOffVm(vm="db", host="h1"))
    [restored] = s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))
    assert isinstance(restored, VmRestored)
    assert (s.memory("db"), s.disk(restored.disk)) == (memory_then, disk_then)
    assert refused(s.do(DeleteCheckpoint(checkpoint="c1", host="h1"))) == "wrong-state"


def test_a_copied_checkpoint_is_deleted_with_its_copy(tmp_path: Path) -> None:
    s = Stack(tmp_path, ["h1"])
    s.do(full_vm())
    s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1", copy_parent=True))
    s.save()
    s.tick()
    own = s.disk("db")
    [deleted] = s.do(DeleteCheckpoint(checkpoint="c1", host="h1"))
    assert isinstance(deleted, CheckpointDeleted)
    assert deleted.disk == "db"
    assert not list(tmp_path.rglob("c1*"))
    assert s.disk("db") == own


def test_a_save_whose_memory_is_made_again_is_told_failed_never_complete(
    tmp_path: Path,
) -> None:
    """A crash of the VM's host rebuilds its memory from its seed: the memory of the stop
    is gone, so the save fails; a restore while a save runs is refused."""
    s = Stack(tmp_path, ["h1"])
    s.machines[0].checkpoints.step_pages = 1024
    s.do(full_vm())
    s.tick()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c1"))
    s.save()
    s.do(CheckpointVm(vm="db", host="h1", checkpoint="c2"))
    assert not s.machines[0].checkpoints.step(s.fleet)
    s.do(PowerOffVm(vm="db", host="h1"))
    [refusal] = s.do(RestoreVm(vm="db", host="h1", checkpoint="c1"))
    assert isinstance(refusal, CommandRejected)
    assert "is saving c2" in refusal.reason
    s.do(PowerOnVm(vm="db", host="h1"))
    s.do(CrashHost(host="h1"))
    [failed] = s.machines[0].checkpoints.step(s.fleet)
    assert isinstance(failed, CheckpointFailed)
    assert "crashed" in failed.reason
    s.fold(failed)
    assert s.fleet.checkpoints["c2"].state == "failed"
    assert not list(tmp_path.rglob("*c2.vmstate*"))
