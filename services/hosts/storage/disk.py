"""One virtual disk on a datastore: a sparse data file, a bitmap of the blocks it holds, a header.

A base disk's content is generated from its seed, as guest memory is (``memory.content``):
zero blocks, blocks of the shared guest-OS template image, unique blocks. Nothing is stored
until it is written, so a disk of any size costs O(1) I/O to create. A copy-on-write child
holds only the blocks written to it; a read falls through the chain to the nearest disk that
holds each block, else to the generated content. A disk with children is their read-only
snapshot: writing to it would change what they read.

Files, in ``<datastore>/disks/``:

- ``<name>.vdisk``: ``blocks * 4096`` bytes, sparse; block b at offset ``b * 4096``, written
  only if this disk holds it;
- ``<name>.vdisk.map``: ``numpy.packbits`` of one bool per block, set if this disk holds it;
- ``<name>.vdisk.json``: ``{"version", "name", "blocks", "template", "seed", "parent"}``.

The map is a write's commit point: the blocks are written and fsynced, then the map is replaced
atomically, so a crash in between leaves newly written blocks reading as before. A block the
disk already holds is rewritten in place, as atomic as the filesystem's aligned 4 KiB writes.
The header is written last at creation and removed first at deletion: a disk exists exactly
when its header does, and a create overwrites what a crashed create or delete left behind.

One process writes a disk at a time (its VM runs on one host). Parents do not change while
they have children, so any process may read through them; a disk object opened before another
process wrote or committed into that disk sees the old map until it is opened again.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import xxhash

from services.hosts.memory.content import (
    ContentLayout,
    ContentProfile,
    PageKind,
    content_layout,
    random_pages,
    template_block,
)
from services.hosts.memory.geometry import LARGE_PAGE_PAGES, PAGE_SIZE, Ints, Mask, PageBytes
from services.hosts.storage.datastore import (
    BlockOutOfRange,
    CannotCommit,
    CorruptDisk,
    Datastore,
    DiskExists,
    DiskHasChildren,
    InvalidArgument,
    UnknownDisk,
    fsync_directory,
)

BLOCK_SIZE = PAGE_SIZE
CHUNK_BLOCKS = LARGE_PAGE_PAGES  # blocks per read when a whole disk is walked (2 MiB)
DISK_PROFILE = ContentProfile(zero=0.5, template=0.3, unique=0.2)
HEADER_VERSION = 1

BlockSelection = Ints | Sequence[int]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_UNIQUE_BLOCK = 4  # a stream tag apart from memory.content's kind, template and unique tags
_LAYOUT_KEY = b"disk"  # hashed with the seed: a disk's layout is not its VM's memory layout


@dataclass(frozen=True, slots=True)
class DiskSpec:
    name: str
    blocks: int
    template: str = "linux"
    seed: int = 0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidArgument(f"{self.name!r} is not a disk name (letters, digits, _.-)")
        if self.blocks < 1 or not 0 <= self.seed < 2**64:
            raise InvalidArgument(
                f"disk {self.name!r} needs >= 1 block and a seed in [0, 2**64), "
                f"not {self.blocks} and {self.seed}"
            )


class DiskFiles(NamedTuple):
    data: Path
    map: Path
    header: Path


def disk_files(store: Datastore, name: str) -> DiskFiles:
    stem = store.disks / f"{name}.vdisk"
    return DiskFiles(stem, stem.with_name(f"{stem.name}.map"), stem.with_name(f"{stem.name}.json"))


@functools.lru_cache(maxsize=16)
def disk_layout(seed: int, blocks: int) -> ContentLayout:
    """Each block's kind and, for template blocks, its page in the template image.

    ``content_layout`` takes a seed only, so the disk's seed is first hashed with a key
    (``xxh3_64(b"disk", seed=seed)``): a VM's disk and its memory, made from the same seed,
    get unrelated layouts.
    """
    return content_layout(xxhash.xxh3_64_intdigest(_LAYOUT_KEY, seed), DISK_PROFILE, blocks)


def base_blocks(spec: DiskSpec, blocks: Ints) -> PageBytes:
    """The generated content of ``blocks`` of a disk no layer of which holds them."""
    layout = disk_layout(spec.seed, spec.blocks)
    out = np.zeros((len(blocks), BLOCK_SIZE), np.uint8)
    kinds = layout.kinds[blocks]
    unique = np.flatnonzero(kinds == PageKind.UNIQUE)
    # One stream per block, so reading one block never generates its neighbours.
    for row, block in zip(unique.tolist(), blocks[unique].tolist(), strict=True):
        out[row] = random_pages([_UNIQUE_BLOCK, spec.seed, block], 1)[0]
    rows = np.flatnonzero(kinds == PageKind.TEMPLATE)
    index = layout.template_index[blocks[rows]]
    for image_block in np.unique(index // LARGE_PAGE_PAGES).tolist():
        here = index // LARGE_PAGE_PAGES == image_block
        pages = template_block(spec.template, image_block)
        out[rows[here]] = pages[index[here] % LARGE_PAGE_PAGES]
    return out


def holding_layer(held: Sequence[Mask], blocks: Ints) -> Ints:
    """Per block, the first of ``held`` (nearest layer first) that holds it; -1 if none."""
    stacked = np.stack([mask[blocks] for mask in held])
    layer: Ints = np.where(stacked.any(axis=0), stacked.argmax(axis=0), -1)
    return layer


def last_writes(blocks: Ints) -> Ints:
    """The positions in ``blocks`` that a write keeps, in block order: a block's last one."""
    _, from_end = np.unique(blocks[::-1], return_index=True)
    kept: Ints = len(blocks) - 1 - from_end
    return kept


def runs(blocks: Ints) -> list[tuple[int, int]]:
    """``(start, stop)`` positions of the runs of consecutive blocks in sorted ``blocks``."""
    edges = [0, *(np.flatnonzero(np.diff(blocks) != 1) + 1).tolist(), len(blocks)]
    return list(itertools.pairwise(edges))


class VirtualDisk:
    """A disk's files on the datastore and the map of the blocks it holds, kept in memory."""

    def __init__(
        self, store: Datastore, spec: DiskSpec, parent: VirtualDisk | None, held: Mask
    ) -> None:
        self.store = store
        self.spec = spec
        self.parent = parent
        self._files = disk_files(store, spec.name)
        self._held = held
        self._gone = False

    @property
    def name(self) -> str:
        return self.spec.name

    @classmethod
    def create(
        cls, store: Datastore, spec: DiskSpec, parent: VirtualDisk | None = None
    ) -> VirtualDisk:
        files = disk_files(store, spec.name)
        if files.header.exists():
            raise DiskExists(spec.name)
        # Both files are holes: an all-zero map says this disk holds no block yet.
        for path, size in ((files.data, spec.blocks * BLOCK_SIZE), (files.map, _map_size(spec))):
            with path.open("wb") as out:
                out.truncate(size)
                os.fsync(out.fileno())
        header = {
            "version": HEADER_VERSION,
            **asdict(spec),
            "parent": None if parent is None else parent.name,
        }
        store.write_atomically(files.header, [json.dumps(header, sort_keys=True).encode()])
        return cls(store, spec, parent, np.zeros(spec.blocks, np.bool_))

    @classmethod
    def open(cls, store: Datastore, name: str, below: tuple[str, ...] = ()) -> VirtualDisk:
        """Open ``name`` and, recursively, its parents (``below``: its children being opened)."""
        if name in below:
            raise CorruptDisk(name, f"it is its own ancestor ({' <- '.join((*below, name))})")
        spec, parent_name = read_header(store, name)
        parent = None if parent_name is None else cls.open(store, parent_name, (*below, name))
        if parent is not None and replace(parent.spec, name=name) != spec:
            raise CorruptDisk(name, "its size, template or seed differ from its parent's")
        return cls(store, spec, parent, _read_map(disk_files(store, name), spec))

    def child(self, name: str) -> VirtualDisk:
        """A copy-on-write child; this disk is read-only while it has children."""
        self._live()
        return VirtualDisk.create(self.store, replace(self.spec, name=name), parent=self)

    def read(self, blocks: BlockSelection) -> PageBytes:
        wanted = self._checked(blocks)
        chain = self._chain()
        layer = holding_layer([disk._held for disk in chain], wanted)
        out = np.empty((len(wanted), BLOCK_SIZE), np.uint8)
        out[layer < 0] = base_blocks(self.spec, wanted[layer < 0])
        for depth in np.unique(layer[layer >= 0]).tolist():
            rows = layer == depth
            out[rows] = chain[depth]._read_held(wanted[rows])
        return out

    def write(self, blocks: BlockSelection, data: PageBytes) -> None:
        """Write ``data[i]`` to ``blocks[i]`` (the last of repeated blocks wins)."""
        wanted = self._checked(blocks)
        if data.dtype != np.uint8 or data.shape != (len(wanted), BLOCK_SIZE):
            raise InvalidArgument(
                f"{len(wanted)} blocks need a ({len(wanted)}, {BLOCK_SIZE}) uint8 array, "
                f"not {data.shape} {data.dtype}"
            )
        self._require_childless("write to")
        kept = last_writes(wanted)
        self._require_room(wanted[kept])
        self._store(wanted[kept], data[kept])

    def written(self) -> int:
        return int(np.count_nonzero(self._held))

    def written_in_chain(self) -> Ints:
        """The blocks some disk of its chain holds: every other block reads as the base's
        generated content, the same for any disk of its size, template and seed."""
        held = np.zeros(self.spec.blocks, np.bool_)
        for disk in self._chain():
            held |= disk._held
        return np.flatnonzero(held).astype(np.int64)

    def allocated_bytes(self) -> int:
        return os.stat(self._files.data).st_blocks * 512

    def checksum(self) -> str:
        """xxh3_128 of the whole disk's content, read a chunk at a time."""
        digest = xxhash.xxh3_128()
        for start in range(0, self.spec.blocks, CHUNK_BLOCKS):
            chunk = np.arange(start, min(start + CHUNK_BLOCKS, self.spec.blocks))
            digest.update(self.read(chunk).data)
        hexdigest: str = digest.hexdigest()
        return hexdigest

    def commit(self) -> VirtualDisk:
        """Merge this child into its parent, delete it, and return the parent.

        A crash part way leaves this child whole (its blocks still win over the parent's), so
        committing again after a restart finishes the merge.
        """
        self._live()
        parent = self.parent
        if parent is None:
            raise CannotCommit(self.name, "a base disk has no parent to merge into")
        self._require_childless("commit")
        siblings = self.store.children(parent.name)
        if siblings != [self.name]:
            raise CannotCommit(self.name, f"its parent {parent.name!r} has children {siblings}")
        mine = np.flatnonzero(self._held)
        parent._require_room(mine)
        for start in range(0, len(mine), CHUNK_BLOCKS):
            chunk = mine[start : start + CHUNK_BLOCKS]
            parent._store(chunk, self._read_held(chunk))
        self._remove()
        return parent

    def delete(self) -> None:
        self._live()
        self._require_childless("delete")
        self._remove()

    def _chain(self) -> list[VirtualDisk]:
        """This disk, then its parent, ..., then the base disk."""
        chain = [self]
        while (parent := chain[-1].parent) is not None:
            chain.append(parent)
        return chain

    def _read_held(self, blocks: Ints) -> PageBytes:
        data = np.memmap(self._files.data, np.uint8, "r", shape=(self.spec.blocks, BLOCK_SIZE))
        return np.asarray(data[blocks])

    def _store(self, blocks: Ints, data: PageBytes) -> None:
        """Write sorted, distinct blocks: data first, then the map that makes new ones seen."""
        held = self._held.copy()
        held[blocks] = True
        fd = os.open(self._files.data, os.O_WRONLY)
        try:
            for start, stop in runs(blocks):
                _write_at(fd, data[start:stop], int(blocks[start]) * BLOCK_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not np.array_equal(held, self._held):
            self.store.write_atomically(self._files.map, [np.packbits(held)])
            self._held = held

    def _require_room(self, blocks: Ints) -> None:
        fresh = int(np.count_nonzero(~self._held[blocks]))
        if fresh:
            self.store.require_room(fresh * BLOCK_SIZE + _map_size(self.spec))

    def _require_childless(self, action: str) -> None:
        children = self.store.children(self.name)
        if children:
            raise DiskHasChildren(self.name, action, children)

    def _checked(self, blocks: BlockSelection) -> Ints:
        self._live()
        raw = np.asarray(blocks)
        if raw.ndim != 1 or (raw.size and raw.dtype.kind not in "iu"):
            raise InvalidArgument(f"blocks must be 1-d block numbers, not {raw.ndim}-d {raw.dtype}")
        wanted = raw.astype(np.int64)
        outside = (wanted < 0) | (wanted >= self.spec.blocks)
        if outside.any():
            raise BlockOutOfRange(self.name, int(wanted[outside][0]), self.spec.blocks)
        return wanted

    def _live(self) -> None:
        if self._gone:
            raise UnknownDisk(self.name)

    def _remove(self) -> None:
        for path in (self._files.header, self._files.map, self._files.data):
            path.unlink(missing_ok=True)
        fsync_directory(self.store.disks)
        self._gone = True


def read_header(store: Datastore, name: str) -> tuple[DiskSpec, str | None]:
    """A disk's spec and its parent's name (None for a base disk)."""
    if not _NAME.fullmatch(name):  # no such file can exist, and the name may leave disks/
        raise UnknownDisk(name)
    try:
        raw = json.loads(disk_files(store, name).header.read_bytes())
        version, parent = raw["version"], raw["parent"]
        spec = DiskSpec(raw["name"], raw["blocks"], raw["template"], raw["seed"])
    except FileNotFoundError:
        raise UnknownDisk(name) from None
    except (ValueError, KeyError, TypeError, InvalidArgument) as err:
        raise CorruptDisk(name, f"unreadable header: {err!r}") from err
    if version != HEADER_VERSION or spec.name != name or not isinstance(parent, str | None):
        raise CorruptDisk(name, f"its header is not a version {HEADER_VERSION} header of it")
    return spec, parent


def children_of(store: Datastore, name: str) -> list[str]:
    read_header(store, name)
    children = []
    with os.scandir(store.disks) as entries:
        for entry in entries:
            other = entry.name.removesuffix(".vdisk.json")
            try:
                if other != entry.name and read_header(store, other)[1] == name:
                    children.append(other)
            except UnknownDisk:  # deleted by another process since the listing
                continue
    return sorted(children)


def _read_map(files: DiskFiles, spec: DiskSpec) -> Mask:
    try:
        packed = np.fromfile(files.map, np.uint8)
        data_size = files.data.stat().st_size
    except FileNotFoundError as err:
        raise CorruptDisk(spec.name, f"{Path(err.filename).name} is missing") from err
    if len(packed) != _map_size(spec) or data_size != spec.blocks * BLOCK_SIZE:
        raise CorruptDisk(spec.name, "its map or data file does not match its size")
    held: Mask = np.unpackbits(packed, count=spec.blocks).astype(np.bool_)
    return held


def _map_size(spec: DiskSpec) -> int:
    return -(-spec.blocks // 8)


def _write_at(fd: int, data: npt.NDArray[np.uint8], offset: int) -> None:
    view = np.ascontiguousarray(data).data.cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
