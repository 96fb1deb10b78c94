"""Moving guest pages between frames and swap blocks, and from one frame to another."""

from __future__ import annotations

import numpy as np

from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import Ints, swap_block, swap_entry
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.swap import SwapSpace


def swap_out(pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints) -> int:
    """Move the resident ``pages`` to swap blocks, dropping their frames; return how many."""
    pages = np.unique(pages)
    pages = pages[guest.flat[pages] >= 0]
    frames = guest.flat[pages]
    blocks = swap.take(len(pages), backed=guest.full)
    if guest.full:
        swap.data[swap.rows(blocks)] = pool.data[pool.rows(frames)]
    guest.flat[pages] = swap_entry(blocks)
    pool.release(frames)
    return len(pages)


def swap_in(pool: FramePool, swap: SwapSpace, guest: GuestMemory, pages: Ints) -> int:
    """Bring the swapped-out ``pages`` back into frames on their home nodes; return how many."""
    pages = np.unique(pages)
    pages = pages[guest.flat[pages] < 0]
    blocks = swap_block(guest.flat[pages])
    frames = pool.allocate_frames(guest.home_of(pages), backed=guest.full)
    if guest.full:
        pool.data[pool.rows(frames)] = swap.data[swap.rows(blocks)]
    guest.flat[pages] = frames
    swap.give_back(blocks)
    return len(pages)


def relocate(pool: FramePool, guest: GuestMemory, pages: Ints, nodes: Ints) -> None:
    """Give each of the resident ``pages`` a new frame on ``nodes[i]`` holding the same
    bytes, letting go of its old one."""
    old = guest.flat[pages]
    new = pool.allocate_frames(nodes, backed=guest.full)
    if guest.full:
        pool.data[pool.rows(new)] = pool.data[pool.rows(old)]
    guest.flat[pages] = new
    pool.release(old)
