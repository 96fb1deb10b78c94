"""What the host's telemetry reports about memory: used, shared, swapped, per NUMA node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.hosts.memory.frames import FramePool
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.sharing import shared
from services.hosts.memory.swap import SwapSpace


@dataclass(frozen=True, slots=True)
class NodeUsage:
    node: int
    total_frames: int
    used_frames: int
    free_frames: int
    free_large_pages: int


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    """Frames are 4 KiB. ``mapped_pages`` counts resident guest pages; sharing makes it exceed
    ``used_frames`` by ``saved_frames``. ``shared_frames`` are frames with several mappers."""

    total_frames: int
    used_frames: int
    free_frames: int
    mapped_pages: int
    shared_frames: int
    saved_frames: int
    swapped_pages: int
    swap_reserved: int
    swap_free: int
    nodes: tuple[NodeUsage, ...]


@dataclass(frozen=True, slots=True)
class VmUsage:
    pages: int
    resident: int
    shared: int  # resident pages on a frame that other pages also map
    swapped: int  # also the size, in blocks, of the VM's thin swap file
    dirty: int


def host_usage(pool: FramePool, swap: SwapSpace) -> MemoryUsage:
    mapped = pool.refs.total()
    nodes = tuple(
        NodeUsage(
            node,
            pool.node_frames(node),
            pool.used_frames(node),
            pool.free_frames(node),
            pool.free_large_pages(node),
        )
        for node in range(pool.nodes)
    )
    return MemoryUsage(
        total_frames=pool.total_frames,
        used_frames=pool.used_frames(),
        free_frames=pool.free_frames(),
        mapped_pages=mapped,
        shared_frames=pool.refs.above(1),
        saved_frames=mapped - pool.used_frames(),
        swapped_pages=swap.used,
        swap_reserved=swap.reserved,
        swap_free=swap.free,
        nodes=nodes,
    )


def vm_usage(pool: FramePool, guest: GuestMemory) -> VmUsage:
    swapped = int(np.count_nonzero(guest.flat < 0))
    return VmUsage(
        pages=guest.pages,
        resident=guest.pages - swapped,
        shared=int(np.count_nonzero(shared(pool, guest.flat))),
        swapped=swapped,
        dirty=int(np.count_nonzero(guest.dirty)),
    )
