"""The datastore: space as files really take it, and files replaced whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xxhash

from services.hosts.storage.datastore import (
    Chunk,
    Datastore,
    DatastoreFull,
    InvalidArgument,
)

GIB = 2**30


def test_a_datastore_makes_its_folders(tmp_path: Path) -> None:
    """A new datastore has ``disks/`` and ``checkpoints/``; opening it again keeps them."""
    Datastore(tmp_path / "ds", GIB)
    (tmp_path / "ds" / "disks" / "kept").write_bytes(b"x")
    Datastore(tmp_path / "ds", GIB)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["checkpoints", "disks"]
    assert (tmp_path / "ds" / "disks" / "kept").read_bytes() == b"x"


def test_used_bytes_count_allocated_blocks_not_sparse_holes(tmp_path: Path) -> None:
    """A 1 GiB sparse file costs (almost) nothing; 64 KiB of data costs at least 64 KiB."""
    store = Datastore(tmp_path, 4 * GIB)
    before = store.used_bytes()
    with (store.disks / "sparse").open("wb") as out:
        out.truncate(GIB)
    assert store.used_bytes() - before < 64 * 1024
    (store.checkpoints / "dense").write_bytes(os.urandom(64 * 1024))
    assert store.used_bytes() - before >= 64 * 1024
    assert store.free_bytes() == 4 * GIB - store.used_bytes()


def test_require_room_says_what_is_used_of_what_capacity(tmp_path: Path) -> None:
    """Room up to the capacity is granted; a byte more is refused with used and capacity.
    What was granted counts until the datastore is walked again: room is not granted twice."""
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "data").write_bytes(b"x" * 5000)
    used = Datastore(tmp_path, GIB).used_bytes()
    store = Datastore(tmp_path, used + 8192)

    with pytest.raises(DatastoreFull, match=f"8193 more bytes wanted, {used} of {used + 8192}"):
        store.require_room(8193)
    store.require_room(8192)
    with pytest.raises(DatastoreFull, match=f"1 more bytes wanted, {used + 8192} of"):
        store.require_room(1)
    assert store.free_bytes() == 8192


def test_write_atomically_returns_the_digest_of_what_it_wrote(tmp_path: Path) -> None:
    """Bytes, memoryviews and arrays (even strided ones) are written in order and hashed."""
    store = Datastore(tmp_path, GIB)
    pages = np.random.default_rng(1).integers(0, 256, (3, 4096), dtype=np.uint8)
    chunks: list[Chunk] = [b"head", memoryview(b"middle"), pages, pages[:, ::2], b""]
    expected = b"head" + b"middle" + pages.tobytes() + pages[:, ::2].tobytes()

    digest = store.write_atomically(store.disks / "file", chunks)

    assert (store.disks / "file").read_bytes() == expected
    assert digest == xxhash.xxh3_128_hexdigest(expected)
    # Readable by the other processes of the datastore, as the disks' data files are.
    assert (store.disks / "file").stat().st_mode & 0o777 == 0o644


def test_write_atomically_replaces_a_file_whole(tmp_path: Path) -> None:
    """The new content replaces the old entirely, and no temporary file stays behind."""
    store = Datastore(tmp_path, GIB)
    target = store.disks / "file"
    target.write_bytes(b"old content that is longer than the new one")
    store.write_atomically(target, [b"new"])
    assert target.read_bytes() == b"new"
    assert os.listdir(store.disks) == ["file"]


def failing_after(first: bytes) -> Iterator[bytes]:
    yield first
    raise RuntimeError("the source broke")


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path: Path) -> None:
    """A chunk source that fails part way leaves nothing at the path and nothing beside it."""
    store = Datastore(tmp_path, GIB)
    with pytest.raises(RuntimeError, match="the source broke"):
        store.write_atomically(store.disks / "file", failing_after(b"x" * 10_000))
    assert os.listdir(store.disks) == []


def test_a_failed_replacement_keeps_the_old_file(tmp_path: Path) -> None:
    """Replacing a file with a source that fails leaves the old file exactly as it was."""
    store = Datastore(tmp_path, GIB)
    target = store.disks / "file"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        store.write_atomically(target, failing_after(b"new"))
    assert target.read_bytes() == b"old"
    assert os.listdir(store.disks) == ["file"]


def test_a_crash_mid_write_never_leaves_part_of_a_file(tmp_path: Path) -> None:
    """A process that dies between two chunks leaves the old file at the path, not a mix."""
    store = Datastore(tmp_path, GIB)
    target = store.disks / "file"
    target.write_bytes(b"old")

    def dying() -> Iterator[bytes]:
        yield b"new, first half"
        os._exit(0)  # no cleanup runs: a crash

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns to pytest
        try:
            store.write_atomically(target, dying())
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert target.read_bytes() == b"old"
    leftovers = [name for name in os.listdir(store.disks) if name != "file"]
    assert len(leftovers) == 1  # the crashed write's temporary: hidden, never at the path
    assert leftovers[0].startswith(".file.")


def test_write_atomically_stops_before_the_datastore_overflows(tmp_path: Path) -> None:
    """The chunk that would pass the capacity is refused; nothing is left at or beside path."""
    store = Datastore(tmp_path, 0)
    store = Datastore(tmp_path, store.used_bytes() + 8192)
    consumed: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index in range(4):
            consumed.append(index)
            yield b"y" * 4096

    with pytest.raises(DatastoreFull, match="12288 more bytes wanted"):
        store.write_atomically(store.disks / "file", chunks())
    assert consumed == [0, 1, 2]
    assert os.listdir(store.disks) == []


def test_write_atomically_refuses_paths_outside_the_datastore(tmp_path: Path) -> None:
    """The capacity covers only the datastore's files, so it writes nothing elsewhere."""
    store = Datastore(tmp_path / "ds", GIB)
    with pytest.raises(InvalidArgument, match="outside the datastore"):
        store.write_atomically(tmp_path / "elsewhere", [b"x"])
    assert not (tmp_path / "elsewhere").exists()


def test_a_datastore_cannot_have_a_negative_capacity(tmp_path: Path) -> None:
    """A negative capacity is refused rather than making every write fail."""
    with pytest.raises(InvalidArgument):
        Datastore(tmp_path, -1)
