"""A checkpoint's memory being saved while its guest runs on.

At the stop the guest's memory is marked copy-on-write: from then on, a page the guest is
about to write and that is not saved yet is first copied aside. The save then writes the
pages in order, each as it was at the stop: from the copy when there is one, else from
memory, which the guest has not written since. So the stop lasts as long as switching the
disk and noting the device state, whatever the memory's size.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np
import xxhash

from services.hosts.checkpoint_files import CheckpointWriter, Written
from services.hosts.memory import HostMemory
from services.hosts.memory.content import random_pages
from services.hosts.memory.geometry import Ints, PageBytes
from services.hosts.storage.disk import VirtualDisk

# Pages a save step writes (64 MiB): one step holds the event loop for tens of ms.
SAVE_STEP_PAGES = 16_384
# Seeds the emulated vCPU and device registers.
_DEVICE = 31
REGISTER_BYTES = 512


def device_state(seed: int, memory_step: int, disk_step: int) -> bytes:
    """The emulated vCPU and device registers (seeded bytes) and where the guest's
    workloads stand: what a restore needs besides memory and disk."""
    registers = random_pages([_DEVICE, seed, memory_step], 1)[0, :REGISTER_BYTES]
    return json.dumps(
        {"registers": registers.tobytes().hex(), "memory_step": memory_step, "disk_step": disk_step}
    ).encode()


def workload_steps(device: bytes) -> tuple[int, int]:
    state = json.loads(device)
    return int(state["memory_step"]), int(state["disk_step"])


def checksum(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class DiskCopy:
    """The checkpoint's own copy of the VM's disk: a disk of the same blocks, template and
    seed holding what its chain holds (the rest reads the same, generated)."""

    source: VirtualDisk
    target: VirtualDisk
    blocks: Ints
    copied: int = 0

    def step(self, budget: int) -> bool:
        chunk = self.blocks[self.copied : self.copied + budget]
        if len(chunk):
            self.target.write(chunk, self.source.read(chunk))
        self.copied += len(chunk)
        return self.copied >= len(self.blocks)


@dataclass
class SaveJob:
    checkpoint: str
    vm: str
    host: str
    pages: int
    writer: CheckpointWriter
    stun_ms: float
    device_checksum: str
    started: float = field(default_factory=time.perf_counter)
    next_page: int = 0
    # Pages the guest wrote before their turn, as they were at the stop.
    aside: dict[int, PageBytes] = field(default_factory=dict)
    copied_aside: int = 0
    written: Written | None = None
    save_seconds: float = 0.0
    disk_copy: DiskCopy | None = None

    def before_write(self, memory: HostMemory, pages: Ints) -> None:
        """The guest is about to write ``pages``: keep the ones not saved yet."""
        unsaved = np.unique(pages[pages >= self.next_page]).tolist()
        wanted = [p for p in unsaved if p not in self.aside]
        if not wanted:
            return
        rows = memory.copy_pages(self.vm, np.asarray(wanted, np.int64))
        for page, row in zip(wanted, rows, strict=True):
            self.aside[page] = row
        self.copied_aside += len(wanted)

    def step(self, memory: HostMemory, budget: int = SAVE_STEP_PAGES) -> bool:
        """Save the next ``budget`` pages (then copy as many disk blocks, if the disk is
        copied); True once all is saved and the file whole and in place."""
        if self.written is not None:
            return True
        if self.next_page < self.pages:
            low, high = self.next_page, min(self.pages, self.next_page + budget)
            rows = memory.copy_pages(self.vm, np.arange(low, high, dtype=np.int64))
            for page in [p for p in self.aside if low <= p < high]:
                rows[page - low] = self.aside.pop(page)
            self.writer.write_pages(rows)
            self.next_page = high
            return False
        if self.disk_copy is not None and not self.disk_copy.step(budget):
            return False
        self.written = self.writer.finish()
        self.save_seconds = time.perf_counter() - self.started
        return True

    def abort(self) -> None:
        self.writer.abort()
