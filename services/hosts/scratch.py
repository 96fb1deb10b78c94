"""A host's scratch pool: space its VMs take on demand for temporary data (shuffle, spill).

``ScratchPool`` is the accounting, pure and frozen, kept by the fold: extents of whole
MiB, each owned by one VM under a tag (a job, a task), and a quota per VM. A VM's quota
is a quarter of the pool until an allocation sets another (at most the whole pool), so
a few VMs can fill the pool between them but no one VM can take it all unasked. The
quotas may add up to more than the pool: the pool's free space is checked too.

``ScratchDisk`` holds the bytes, as the emulated hardware does: mutable, outside the
log, checked against the pool on every access, so one VM can neither read nor write an
extent it does not own. Bytes are kept sparsely, in blocks created by the first write
to them (unwritten space reads as zeros), up to a cap per host: the space is mostly
accounting, but any of it can hold real bytes. Extent numbers come from a counter in
the fold and are never used twice on a host, so a new extent never shows bytes that an
earlier one, of any VM, left behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

MIB = 1024 * 1024
# A VM's quota, until it asks for another: this share of the pool.
DEFAULT_QUOTA_SHARE = 4
# Real bytes are kept in blocks of this size, at most MAX_REAL_BYTES of them per host.
BLOCK = 64 * 1024
MAX_REAL_BYTES = 64 * MIB


class ScratchError(Exception):
    """A scratch allocation, release or access that the pool refuses."""


class NoRoom(ScratchError):
    """Over the VM's quota, or the pool's free space (or the emulation's real bytes)."""


class NotHeld(ScratchError):
    """The VM holds no space under that tag."""


class AccessDenied(ScratchError):
    """Not an extent of this VM, or outside it."""


@dataclass(frozen=True, slots=True)
class Extent:
    id: int
    vm: str
    tag: str
    mib: int


@dataclass(frozen=True, slots=True)
class ScratchPool:
    capacity_mib: int = 0
    extents: Mapping[int, Extent] = field(default_factory=dict)
    # Only the quotas that allocations set; every other VM has the default.
    quotas: Mapping[str, int] = field(default_factory=dict)
    next_extent: int = 0

    @property
    def used_mib(self) -> int:
        return sum(e.mib for e in self.extents.values())

    @property
    def free_mib(self) -> int:
        return self.capacity_mib - self.used_mib

    def default_quota(self) -> int:
        return self.capacity_mib // DEFAULT_QUOTA_SHARE

    def quota(self, vm: str) -> int:
        return self.quotas.get(vm, self.default_quota())

    def held(self, vm: str, tag: str | None = None) -> list[Extent]:
        """``vm``'s extents under ``tag``, or all of them."""
        return [e for e in self.extents.values() if e.vm == vm and tag in (None, e.tag)]

    def used(self, vm: str) -> int:
        return sum(e.mib for e in self.held(vm))

    def by_vm(self) -> dict[str, int]:
        """Each VM's space, in one pass (telemetry asks for all of them every tick)."""
        out: dict[str, int] = {}
        for e in self.extents.values():
            out[e.vm] = out.get(e.vm, 0) + e.mib
        return out

    def allocate(self, vm: str, tag: str, mib: int, quota_mib: int | None = None) -> ScratchPool:
        """A new extent of ``mib`` for ``vm``; ``quota_mib`` sets its quota from now on."""
        quota = self.quota(vm) if quota_mib is None else quota_mib
        if quota > self.capacity_mib:
            raise NoRoom(f"a quota of {quota} MiB is more than the pool's {self.capacity_mib} MiB")
        used = self.used(vm)
        if used + mib > quota:
            raise NoRoom(
                f"VM {vm} holds {used} MiB of its {quota} MiB quota; {mib} MiB more is over it"
            )
        if mib > self.free_mib:
            raise NoRoom(f"the pool has {self.free_mib} MiB free, {mib} MiB asked")
        return self.grant(vm, tag, mib, quota, self.next_extent)

    def grant(self, vm: str, tag: str, mib: int, quota_mib: int, extent: int) -> ScratchPool:
        """Record an allocation as decided: the fold applies facts, it does not judge them."""
        return replace(
            self,
            extents={**self.extents, extent: Extent(extent, vm, tag, mib)},
            quotas={**self.quotas, vm: quota_mib},
            next_extent=max(self.next_extent, extent + 1),
        )

    def release(self, vm: str, tag: str | None = None) -> tuple[ScratchPool, int]:
        """Free ``vm``'s extents under ``tag`` (all of them when None); the MiB freed."""
        freed = self.held(vm, tag)
        if not freed:
            under = f" under tag {tag}" if tag is not None else ""
            raise NotHeld(f"VM {vm} holds no scratch space{under}")
        return self.drop(vm, tag), sum(e.mib for e in freed)

    def drop(self, vm: str, tag: str | None = None) -> ScratchPool:
        if not self.held(vm, tag):
            return self
        kept = {i: e for i, e in self.extents.items() if not (e.vm == vm and tag in (None, e.tag))}
        return replace(self, extents=kept)

    def reclaim(self, vm: str) -> ScratchPool:
        """Take back all of ``vm``'s space and forget its quota: it left the host."""
        if vm not in self.quotas and not self.held(vm):
            return self
        quotas = {k: q for k, q in self.quotas.items() if k != vm}
        return replace(self.drop(vm), quotas=quotas)


class ScratchDisk:
    """The bytes of one host's scratch extents; the pool says who owns what."""

    def __init__(self, max_bytes: int = MAX_REAL_BYTES) -> None:
        self.max_blocks = max_bytes // BLOCK
        self._blocks: dict[int, dict[int, bytearray]] = {}

    @property
    def real_bytes(self) -> int:
        return sum(len(blocks) for blocks in self._blocks.values()) * BLOCK

    def write(self, pool: ScratchPool, vm: str, extent: int, offset: int, data: bytes) -> None:
        self._owned(pool, vm, extent, offset, len(data))
        blocks = self._blocks.get(extent, {})
        spans = list(_spans(offset, len(data)))
        new = sum(b not in blocks for b, _, _ in spans)
        if new and self.real_bytes // BLOCK + new > self.max_blocks:
            raise NoRoom(
                f"the emulated scratch disk keeps at most {self.max_blocks * BLOCK} real bytes"
            )
        self._blocks[extent] = blocks
        done = 0
        for b, start, size in spans:
            blocks.setdefault(b, bytearray(BLOCK))[start : start + size] = data[done : done + size]
            done += size

    def read(self, pool: ScratchPool, vm: str, extent: int, offset: int, n: int) -> bytes:
        self._owned(pool, vm, extent, offset, n)
        blocks = self._blocks.get(extent, {})
        out = bytearray(n)
        done = 0
        for b, start, size in _spans(offset, n):
            if b in blocks:
                out[done : done + size] = blocks[b][start : start + size]
            done += size
        return bytes(out)

    def forget(self, extents: Iterable[Extent]) -> None:
        """Let the bytes of freed extents go."""
        for e in extents:
            self._blocks.pop(e.id, None)

    @staticmethod
    def _owned(pool: ScratchPool, vm: str, extent: int, offset: int, n: int) -> None:
        e = pool.extents.get(extent)
        # Another VM's extent reads as no extent at all: a VM learns nothing of the others.
        if e is None or e.vm != vm:
            raise AccessDenied(f"VM {vm} holds no scratch extent {extent}")
        if offset < 0 or n < 0 or offset + n > e.mib * MIB:
            raise AccessDenied(
                f"bytes {offset}..{offset + n} are outside extent {extent} ({e.mib} MiB)"
            )


def _spans(offset: int, n: int) -> Iterable[tuple[int, int, int]]:
    """(block, start in it, length) for each block that bytes offset..offset+n touch."""
    end = offset + n
    while offset < end:
        b, start = divmod(offset, BLOCK)
        size = min(BLOCK - start, end - offset)
        yield b, start, size
        offset += size
