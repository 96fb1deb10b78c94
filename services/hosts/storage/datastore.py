"""The datastore: a directory every hosts process on the machine shares, like a SAN or NAS.

Space is what its files really take (allocated blocks, so the holes of sparse disks cost
nothing), checked against a capacity the operator gives. A file that must never be seen half
written (a disk's header, its block map) is replaced atomically: written to a temporary file in
the same directory, fsynced, renamed over the old one, and the directory fsynced, so a crash
leaves the old file or the new one.

Capacity is a soft limit between processes: each checks it before it writes, so two that write
at the same moment can together overshoot it by what they write.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import xxhash

if TYPE_CHECKING:
    from services.hosts.storage.disk import DiskSpec, VirtualDisk

Chunk = bytes | memoryview | npt.NDArray[np.uint8]

# How old a room check's view of what the datastore holds may be.
ROOM_WALK_SECONDS = 1.0
FILE_MODE = 0o644
_ALLOCATION_UNIT = 4096  # a file's bytes take whole 4 KiB blocks on ext4, xfs and tmpfs


class StorageError(Exception):
    """The root of every error the storage package raises."""


class InvalidArgument(StorageError):
    """A capacity, path, disk name, size, seed, block list or data array that cannot be."""


class DatastoreFull(StorageError):
    def __init__(self, wanted: int, used: int, capacity: int) -> None:
        super().__init__(
            f"datastore full: {wanted} more bytes wanted, {used} of {capacity} bytes used"
        )
        self.wanted = wanted
        self.used = used
        self.capacity = capacity


class DiskError(StorageError):
    """The root of the errors a disk operation raises; the disk is as it was."""


class UnknownDisk(DiskError):
    def __init__(self, disk: str) -> None:
        super().__init__(f"no disk {disk!r} on this datastore")
        self.disk = disk


class DiskExists(DiskError):
    def __init__(self, disk: str) -> None:
        super().__init__(f"disk {disk!r} already exists on this datastore")
        self.disk = disk


class BlockOutOfRange(DiskError):
    def __init__(self, disk: str, block: int, blocks: int) -> None:
        super().__init__(f"block {block} is outside disk {disk!r} (blocks 0..{blocks - 1})")
        self.disk = disk
        self.block = block
        self.blocks = blocks


class DiskHasChildren(DiskError):
    """Writing to or deleting a snapshot's parent would change what its children read."""

    def __init__(self, disk: str, action: str, children: list[str]) -> None:
        super().__init__(
            f"cannot {action} disk {disk!r}: it is the read-only parent of {', '.join(children)}"
        )
        self.disk = disk
        self.children = children


class CannotCommit(DiskError):
    def __init__(self, disk: str, reason: str) -> None:
        super().__init__(f"cannot commit disk {disk!r}: {reason}")
        self.disk = disk


class CorruptDisk(DiskError):
    def __init__(self, disk: str, reason: str) -> None:
        super().__init__(f"disk {disk!r} is damaged: {reason}")
        self.disk = disk


class Datastore:
    """The shared directory: ``disks/`` for virtual disks, ``checkpoints/`` for VM state."""

    def __init__(self, root: Path, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise InvalidArgument(f"a datastore cannot hold {capacity_bytes} bytes")
        self.root = root.resolve()
        self.capacity_bytes = capacity_bytes
        # When the datastore was last walked for a room check, and what it held plus what
        # was granted since.
        self._granted: tuple[float, int] | None = None
        self.disks = self.root / "disks"
        self.checkpoints = self.root / "checkpoints"
        for folder in (self.disks, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)

    def used_bytes(self) -> int:
        return _allocated(self.root)

    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes())

    def require_room(self, nbytes: int) -> None:
        """Room for ``nbytes`` more. What the datastore holds is walked at most once a
        second for this (a guest's every write asks), and what was granted since is
        counted on top: the check errs on the full side."""
        used = self._room_used()
        self._require(nbytes, used)
        self._grant(nbytes)

    def _room_used(self) -> int:
        now = time.monotonic()
        if self._granted is None or now - self._granted[0] > ROOM_WALK_SECONDS:
            self._granted = (now, self.used_bytes())
        return self._granted[1]

    def _grant(self, nbytes: int) -> None:
        if self._granted is not None:
            self._granted = (self._granted[0], self._granted[1] + nbytes)

    def write_atomically(self, path: Path, chunks: Iterable[Chunk]) -> str:
        """Replace ``path`` (in this datastore) with the chunks; return their xxh3_128 digest.

        Room is checked before each chunk: the size is known only once the chunks are
        consumed. The file being replaced counts as used, since old and new coexist until the
        rename. On any failure the temporary file is removed and ``path`` is as it was.
        """
        if not path.resolve().is_relative_to(self.root):
            raise InvalidArgument(f"{path} is outside the datastore at {self.root}")
        # A disk's map is replaced at each guest write: as of the walk a room check uses.
        used = self._room_used()
        digest = xxhash.xxh3_128()
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            # As the data files are: other processes on the datastore read them too.
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                size = 0
                for chunk in chunks:
                    view = _flat(chunk)
                    size += view.nbytes
                    self._require(-(-size // _ALLOCATION_UNIT) * _ALLOCATION_UNIT, used)
                    out.write(view)
                    digest.update(view)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)
        self._grant(size)
        hexdigest: str = digest.hexdigest()
        return hexdigest

    def create_disk(self, spec: DiskSpec) -> VirtualDisk:
        from services.hosts.storage.disk import VirtualDisk

        return VirtualDisk.create(self, spec)

    def open_disk(self, name: str) -> VirtualDisk:
        from services.hosts.storage.disk import VirtualDisk

        return VirtualDisk.open(self, name)

    def has(self, name: str) -> bool:
        """Whether a disk of this name exists (its header is written last, removed first)."""
        from services.hosts.storage.disk import disk_files

        return disk_files(self, name).header.exists()

    def children(self, name: str) -> list[str]:
        """The disks whose parent is ``name``, by name; read from every header, so it sees
        children that other processes made."""
        from services.hosts.storage.disk import children_of

        return children_of(self, name)

    def _require(self, wanted: int, used: int) -> None:
        if used + wanted > self.capacity_bytes:
            raise DatastoreFull(wanted, used, self.capacity_bytes)


def fsync_directory(folder: Path) -> None:
    """Make the names in ``folder`` (a rename, a new or removed file) survive a crash."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _allocated(folder: Path | str) -> int:
    """The bytes the files under ``folder`` take on disk (holes are free)."""
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    total += _allocated(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except FileNotFoundError:  # renamed or removed by another process meanwhile
                continue
    return total


def _flat(chunk: Chunk) -> memoryview:
    """A chunk's bytes as one flat run (an array is made contiguous first)."""
    if isinstance(chunk, np.ndarray):
        return np.ascontiguousarray(chunk).data.cast("B")
    return memoryview(chunk).cast("B")
