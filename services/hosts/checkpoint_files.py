"""Checkpoint files on the datastore: written in pieces to a hidden name and renamed into
place only once whole and flushed, so a crash never leaves one that looks complete; read
back and checked against the checksum their event recorded.

A file is a 4 KiB JSON header, the device state in one 4 KiB block, then the guest's
pages in order: ``checksum`` covers the whole file, ``memory_checksum`` the pages
alone (the same figure as the hosts' memory checksum of the guest).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from services.hosts.memory.geometry import PAGE_SIZE, PageBytes
from services.hosts.storage.datastore import Datastore, fsync_directory

FORMAT = 1
HEADER_BYTES = PAGE_SIZE
DEVICE_BYTES = PAGE_SIZE
READ_CHUNK = 8 * 1024 * 1024


class CheckpointFileError(Exception):
    """A checkpoint file that is missing, damaged or not what its event says."""


def checkpoint_bytes(mem_mib: int) -> int:
    """The size of the file of a checkpoint of a guest of ``mem_mib``."""
    return HEADER_BYTES + DEVICE_BYTES + mem_mib * 1024 * 1024


def checkpoint_path(store: Datastore, checkpoint: str) -> Path:
    return store.checkpoints / f"{checkpoint}.vmstate"


def relative(store: Datastore, path: Path) -> str:
    return str(path.relative_to(store.root))


@dataclass(frozen=True, slots=True)
class Written:
    bytes: int
    checksum: str
    memory_checksum: str


class CheckpointWriter:
    """One checkpoint file being written, in order, under a temporary name."""

    def __init__(
        self, store: Datastore, checkpoint: str, header: dict[str, Any], pages: int
    ) -> None:
        """Opened ahead of the stop, which then only hands it the device state."""
        self.path = checkpoint_path(store, checkpoint)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self._head = {"format": FORMAT, **header, "pages": pages}
        self.size = checkpoint_bytes(0) + pages * PAGE_SIZE
        store.require_room(self.size)
        self._file = xxhash.xxh3_128()
        self._memory = xxhash.xxh3_128()
        self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._offset = 0

    def write_device(self, device: bytes) -> None:
        """The device state at the stop; first, before any page."""
        if self._offset or len(device) > DEVICE_BYTES:
            raise CheckpointFileError(f"a device state of {len(device)} bytes, at {self._offset}")
        head = json.dumps({**self._head, "device_bytes": len(device)}).encode()
        if len(head) > HEADER_BYTES:
            raise CheckpointFileError(f"a checkpoint header of {len(head)} bytes does not fit")
        self._append(head.ljust(HEADER_BYTES, b" "))
        self._append(device.ljust(DEVICE_BYTES, b"\0"))

    def write_pages(self, contents: PageBytes) -> None:
        data = np.ascontiguousarray(contents).reshape(-1).data
        self._memory.update(data)
        self._append(data)

    def _append(self, data: bytes | memoryview) -> None:
        self._file.update(data)
        view = memoryview(data)
        while view:
            done = os.pwrite(self._fd, view, self._offset)
            self._offset += done
            view = view[done:]

    def finish(self) -> Written:
        """Flush, then rename into place and flush the directory: only now is it there."""
        if self._offset != self.size:
            raise CheckpointFileError(f"wrote {self._offset} of {self.size} bytes")
        os.fsync(self._fd)
        os.close(self._fd)
        os.replace(self.tmp, self.path)
        fsync_directory(self.path.parent)
        return Written(self.size, self._file.hexdigest(), self._memory.hexdigest())

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class SavedFile:
    path: Path
    header: dict[str, Any]
    device: bytes
    pages: int

    @property
    def memory_offset(self) -> int:
        return HEADER_BYTES + DEVICE_BYTES


def read_saved(store: Datastore, checkpoint: str) -> SavedFile:
    path = checkpoint_path(store, checkpoint)
    try:
        with path.open("rb") as f:
            header = json.loads(f.read(HEADER_BYTES))
            device = f.read(int(header["device_bytes"]))
    except FileNotFoundError:
        raise CheckpointFileError(f"checkpoint {checkpoint} has no file at {path}") from None
    except (ValueError, KeyError) as err:
        raise CheckpointFileError(f"checkpoint {checkpoint}'s header is damaged: {err}") from None
    return SavedFile(path, header, device, int(header["pages"]))


def file_problem(store: Datastore, checkpoint: str, checksum: str | None) -> str | None:
    """What is wrong with the checkpoint's file, read back whole, or None."""
    check = FileCheck(store, checkpoint, checksum)
    while (found := check.step()) is False:
        pass
    assert found is not True
    return found


class FileCheck:
    """A checkpoint file read back a piece at a time, against the checksum its event says."""

    def __init__(self, store: Datastore, checkpoint: str, checksum: str | None) -> None:
        self.checkpoint = checkpoint
        self.expected = checksum
        self.path = checkpoint_path(store, checkpoint)
        self._hasher = xxhash.xxh3_128()
        self._offset = 0

    def step(self, budget: int = 64 * 1024 * 1024) -> str | bool | None:
        """False while there is more to read; then None (it reads back as written) or
        what is wrong with it."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                left = budget
                while left > 0 and (chunk := f.read(min(READ_CHUNK, left))):
                    self._hasher.update(chunk)
                    self._offset += len(chunk)
                    left -= len(chunk)
                if left <= 0:
                    return False
        except FileNotFoundError:
            return f"checkpoint {self.checkpoint} has no file on the datastore ({self.path.name})"
        if self._hasher.hexdigest() != self.expected:
            return (
                f"checkpoint {self.checkpoint}'s file reads back as {self._hasher.hexdigest()}, "
                f"not {self.expected} as written"
            )
        return None


def memory_chunks(saved: SavedFile, chunk_pages: int) -> Iterator[tuple[int, PageBytes]]:
    """The saved guest pages, ``chunk_pages`` at a time: (first page, rows)."""
    with saved.path.open("rb") as f:
        f.seek(saved.memory_offset)
        for first in range(0, saved.pages, chunk_pages):
            count = min(chunk_pages, saved.pages - first)
            raw = f.read(count * PAGE_SIZE)
            if len(raw) != count * PAGE_SIZE:
                raise CheckpointFileError(f"{saved.path.name} ends at page {first}")
            yield first, np.frombuffer(raw, np.uint8).reshape(count, PAGE_SIZE)
