"""The VMs' disks as this process's hosts use them: which VM has which disk on the shared
datastore, what its guest reads and writes each tick (real blocks), and what that came to.

A disk costs the datastore nothing until its guest first writes: its blocks until then
are its template's and its seed's, generated when read. So creating a VM opens no file,
and a VM whose guest is sizes only (accounting memory) never writes one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from services.hosts.memory.content import random_pages
from services.hosts.memory.geometry import Ints, PageBytes
from services.hosts.storage.datastore import Datastore, DatastoreFull, UnknownDisk
from services.hosts.storage.disk import BLOCK_SIZE, DiskSpec, VirtualDisk
from shared.metrics import DATASTORE_USED

log = structlog.get_logger("vplane.hosts.disks")

GIB = 1024**3
BLOCKS_PER_GIB = GIB // BLOCK_SIZE
# What a guest at full speed reads and writes of its disk in one tick, in blocks.
READS_PER_TICK = 32
WRITES_PER_TICK = 16
# Seeds the guest's disk accesses apart from its memory's and its content's streams.
_DISK_IO = 21
# A datastore with less than this free takes no new disk.
MIN_FREE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DiskWork:
    """One tick of a guest's disk I/O: the blocks it read (and their bytes), those it wrote,
    and the disk."""

    disk: str
    read: Ints
    data: PageBytes
    written: Ints


@dataclass(frozen=True, slots=True)
class DiskIo:
    """Blocks a guest read and wrote in its last tick; writes the datastore had no room for."""

    reads: int = 0
    writes: int = 0
    refused: int = 0


class Disks:
    """``root``: the datastore's directory (None: VMs get no disks); it is made when a
    disk is first written, so a process whose guests never write leaves no trace."""

    def __init__(self, root: Path | None, capacity_bytes: int = 0) -> None:
        self.root = root
        self.capacity_bytes = capacity_bytes
        self._datastore: Datastore | None = None
        # What the datastore held at the last tick's walk.
        self._walked: int | None = None
        # The disks of the VMs on this process's hosts, by VM.
        self.specs: dict[str, DiskSpec] = {}
        self.io: dict[str, DiskIo] = {}
        self._open: dict[str, VirtualDisk] = {}
        self._steps: dict[str, int] = {}

    def attach(self, vm: str, gib: int, template: str, seed: int, disk: str = "") -> None:
        """``vm`` now runs on one of this process's hosts (created, restarted or migrated
        here) and writes ``disk`` (its own name by default), wherever the datastore keeps
        it."""
        if self.root is None or gib < 1:
            return
        spec = DiskSpec(name=disk or vm, blocks=gib * BLOCKS_PER_GIB, template=template, seed=seed)
        if self.specs.get(vm) != spec:
            self._open.pop(vm, None)
        self.specs[vm] = spec

    def exists(self, disk: str) -> bool:
        return self.root is not None and self.datastore().has(disk)

    def switch(self, vm: str, disk: VirtualDisk) -> None:
        """``vm`` writes ``disk`` from now on."""
        self.specs[vm], self._open[vm] = disk.spec, disk

    def branch(self, vm: str, parent: str, child: str) -> None:
        """``vm`` goes on writing ``child``, a new copy-on-write child of ``parent``."""
        self.switch(vm, self.datastore().open_disk(parent).child(child))

    def merge_back(self, vm: str) -> None:
        """``vm``'s disk is merged into its parent, which it writes from now on."""
        self.switch(vm, self.disk(vm).commit())

    def step_of(self, vm: str) -> int:
        return self._steps.get(vm, 0)

    def set_step(self, vm: str, step: int) -> None:
        self._steps[vm] = step

    def detach(self, vm: str) -> None:
        """``vm`` left this process's hosts; its disk stays on the datastore."""
        self.specs.pop(vm, None)
        self._open.pop(vm, None)
        self.io.pop(vm, None)

    def destroy(self, vm: str) -> None:
        """``vm`` is gone, and its disk with it (if it was ever written)."""
        spec = self.specs.get(vm)
        self.detach(vm)
        if spec is None or not self.root or not self.root.exists():
            return
        disk = self._existing(spec)
        if disk is not None:
            disk.delete()

    def disk(self, vm: str) -> VirtualDisk:
        """``vm``'s disk, opened (or made, on its first use)."""
        disk = self._open.get(vm)
        if disk is None:
            spec = self.specs[vm]
            disk = self._existing(spec) or self.datastore().create_disk(spec)
            self._open[vm] = disk
        return disk

    def datastore(self) -> Datastore:
        if self._datastore is None:
            assert self.root is not None
            self._datastore = Datastore(self.root, self.capacity_bytes)
        return self._datastore

    def _existing(self, spec: DiskSpec) -> VirtualDisk | None:
        try:
            disk = self.datastore().open_disk(spec.name)
        except UnknownDisk:
            return None
        if disk.spec != spec:
            # Left by an earlier stack that used the same namespace and VM name.
            log.warning("replacing a stale disk on the datastore", vm=spec.name)
            disk.delete()
            return None
        return disk

    def work(self, vm: str, speed: float) -> DiskWork | None:
        """One tick of the guest's disk I/O: seeded blocks read and written, real bytes,
        fewer as contention slows it."""
        spec = self.specs.get(vm)
        if spec is None:
            return None
        step = self._steps.get(vm, 0)
        self._steps[vm] = step + 1
        rng = np.random.default_rng([_DISK_IO, spec.seed, step])
        reads = rng.integers(0, spec.blocks, int(READS_PER_TICK * speed))
        writes = np.unique(rng.integers(0, spec.blocks, int(WRITES_PER_TICK * speed)))
        disk = self.disk(vm)
        data = disk.read(reads)
        refused = 0
        if len(writes):
            try:
                disk.write(writes, random_pages([_DISK_IO, spec.seed, step, 1], len(writes)))
            except DatastoreFull as err:
                log.warning("a guest's disk write found the datastore full", vm=vm, error=str(err))
                refused, writes = len(writes), writes[:0]
        self.io[vm] = DiskIo(len(reads), len(writes), refused)
        return DiskWork(disk.name, reads, data, writes)

    def mbs(self, vm: str, tick_s: float) -> tuple[float, float]:
        """Last tick's reads and writes in MB/s of emulated time."""
        io = self.io.get(vm, DiskIo())
        per_s = BLOCK_SIZE / 1e6 / tick_s
        return io.reads * per_s, io.writes * per_s

    def problem(self, need: int, what: str) -> str | None:
        """Why the datastore cannot take ``need`` more bytes for ``what`` now, or None."""
        if self.root is None:
            return None
        # As of this tick's walk (decisions come by the hundred; a walk reads every file).
        used = self._walked if self._walked is not None else self.used_bytes()
        free = self.capacity_bytes - used
        if free >= need:
            return None
        return (
            f"the datastore has {max(free, 0) / 2**20:.1f} MiB free of "
            f"{self.capacity_bytes / GIB:.2f} GiB; {what} needs {need / 2**20:.1f} MiB"
        )

    def used_bytes(self) -> int:
        if self.root is None or not self.root.exists():
            return 0
        return self.datastore().used_bytes()

    def usage_gib(self) -> tuple[float, float]:
        """The datastore's capacity and what its files hold, GiB."""
        if self.root is None:
            return 0.0, 0.0
        used = self._walked = self.used_bytes()
        DATASTORE_USED.set(used)
        return self.capacity_bytes / GIB, used / GIB
