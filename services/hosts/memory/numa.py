"""Moving a guest's memory between the NUMA nodes of its host, and how local its accesses are.

A guest's vCPUs run on one node (``GuestMemory.vcpu_node``); an access is local when its
page's frame lies on that node. Moving a page copies its bytes to a free frame on the target
node and remaps it, so the guest reads the same bytes (its checksum does not change).

Shared pages stay where they are: their frame is mapped by other pages too (there is no
reverse map saying whose), and a private copy would undo the saving the page-sharing policy
asked for. Swapped-out pages have no frame to move; once the vCPUs move, every large page of
the guest is homed on their node, so a swap-in or a copy-on-write break lands there.

Pages move 4 KiB at a time, so a large page whose pages are moved apart is no longer backed
by one 2 MiB block (``whole_large_pages`` counts those that are); one moved whole, in order,
into a free block is whole again.
"""

from __future__ import annotations

import numpy as np

from services.hosts.memory.errors import InvalidArgument, OutOfFrames
from services.hosts.memory.frames import FramePool
from services.hosts.memory.geometry import LARGE_PAGE_SHIFT, Ints, Mask, whole_rows
from services.hosts.memory.guest import GuestMemory
from services.hosts.memory.paging import relocate
from services.hosts.memory.sharing import shared


def check_node(pool: FramePool, node: int) -> int:
    if not 0 <= node < pool.nodes:
        raise InvalidArgument(f"the host has NUMA nodes 0..{pool.nodes - 1}, not {node}")
    return int(node)


def move_vcpus(pool: FramePool, guest: GuestMemory, node: int) -> None:
    """Run the guest's vCPUs on ``node``, where the frames its pages need from now on go."""
    guest.vcpu_node = check_node(pool, node)
    guest.home = np.full(len(guest.home), guest.vcpu_node, np.int64)


def to_move(pool: FramePool, guest: GuestMemory, node: int, *, hot_first: bool) -> Ints:
    """The pages a move to ``node`` copies (resident, not shared, elsewhere), in the order
    they go: the hottest first (heat, then read count, then page number), or page order."""
    entries = guest.flat
    pages = np.flatnonzero(_movable(pool, entries, check_node(pool, node))).astype(np.int64)
    if hot_first:
        pages = pages[np.lexsort((pages, -guest.reads[pages].astype(np.int64), -guest.heat[pages]))]
    return pages


def move(pool: FramePool, guest: GuestMemory, pages: Ints, node: int) -> int:
    """Move those of ``pages`` a move to ``node`` still copies (see ``to_move``) there;
    return how many. Raises ``OutOfFrames``, changing nothing, when the node has too few
    free frames."""
    guest.require_bytes()
    node = check_node(pool, node)
    pages = np.unique(pages)
    pages = pages[_movable(pool, guest.flat[pages], node)]
    if len(pages) > pool.free_frames(node):
        raise OutOfFrames(len(pages), pool.free_frames(node), f"frames on node {node}")
    relocate(pool, guest, pages, np.full(len(pages), node, np.int64))
    return len(pages)


def whole_large_pages(guest: GuestMemory) -> int:
    """How many of the guest's large pages map one whole block, in order."""
    return int(np.count_nonzero(whole_rows(guest.table)))


def local_share(pool: FramePool, guest: GuestMemory, pages: Ints) -> float | None:
    """The share of accesses to ``pages`` (one entry each) that find their page on the vCPUs'
    node; ``None`` for no access. A swapped-out page is not local."""
    if not len(pages):
        return None
    local = node_of(pool, guest.flat[pages]) == guest.vcpu_node
    return int(np.count_nonzero(local)) / len(pages)


def node_of(pool: FramePool, entries: Ints) -> Ints:
    """The node of each entry's frame; -1 for a swapped-out page."""
    resident = entries >= 0
    blocks = np.where(resident, entries, 0) >> LARGE_PAGE_SHIFT
    nodes: Ints = np.where(resident, pool.block_node[blocks], -1)
    return nodes


def _movable(pool: FramePool, entries: Ints, node: int) -> Mask:
    """Which entries map a frame of their own on a node other than ``node``."""
    nodes = node_of(pool, entries)
    movable: Mask = (nodes >= 0) & (nodes != node) & ~shared(pool, entries)
    return movable
