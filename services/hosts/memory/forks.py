"""Template forks: a child whose page table maps every frame of its parent copy-on-write.

No page's bytes are copied: the child gets a copy of the parent's page table (8 bytes a
page) and each frame one more reference. A large page still on one whole block in order
(the usual case for a guest nothing has written apart) is counted once for its 512
frames, so a fork's cost grows with the parent's large pages, not with its bytes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.hosts.memory.errors import PageNotResident
from services.hosts.memory.frames import FramePool
from services.hosts.memory.guest import GuestMemory


def fork(pool: FramePool, parent: GuestMemory, child: str) -> GuestMemory:
    """The child ``child`` of ``parent``; raises ``PageNotResident`` (changing nothing)
    when a page of the parent is swapped out: a swap block has one owner."""
    parent.require_bytes()
    table = parent.table
    swapped = np.flatnonzero(table.reshape(-1) < 0)
    if len(swapped):
        raise PageNotResident(parent.name, int(swapped[0]))
    pool.retain_table(table)
    spec = replace(parent.spec, name=child)
    return GuestMemory.mapping(spec, table.copy(), parent.home.copy(), parent.vcpu_node)
