"""Page batches as bytes on a data flow: a small header, then pages, zero markers, contents;
pages that hold a disk block as mappings (page, disk, block), the header alone; and pages
the target holds an earlier copy of as their XOR with it, compressed."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from services.hosts.memory import PAGE_SIZE, PageBatch, SizeMismatch
from services.hosts.memory.geometry import Ints, PageBytes

MAGIC = b"VPB1"
MAPPED = b"VPM1"
STALE = b"VPS1"
DIFF = b"VPX1"
_HEAD = struct.Struct(">4sI")
# What a mapping costs on the wire: its page and its block.
MAPPING_BYTES = 16


@dataclass(frozen=True, slots=True, eq=False)
class MappedBatch:
    """Pages whose bytes are a block of a disk on the shared datastore: the target reads
    the block there instead of the page crossing."""

    guest_pages: int
    pages: Ints
    disks: list[str]
    disk: Ints  # per page: an index in ``disks``
    blocks: Ints

    @property
    def wire_bytes(self) -> int:
        return MAPPING_BYTES * len(self.pages)


@dataclass(frozen=True, slots=True, eq=False)
class StaleBatch:
    """Pages whose copy on the target is stale (written since they were sent): they are
    not there any more, and come again after the switchover."""

    guest_pages: int
    pages: Ints


@dataclass(frozen=True, slots=True, eq=False)
class DiffBatch:
    """Pages the target holds an earlier copy of, each as its XOR with that copy; the
    batch's XORs are compressed together (a page whose write touched a few bytes is
    mostly zeros)."""

    guest_pages: int
    pages: Ints
    packed: bytes  # zlib of the XORs, page after page

    @classmethod
    def of(cls, guest_pages: int, pages: Ints, new: PageBytes, held: PageBytes) -> DiffBatch:
        return cls(guest_pages, pages, zlib.compress(np.bitwise_xor(new, held).tobytes(), 1))

    @property
    def wire_bytes(self) -> int:
        return len(self.packed) + 8 * len(self.pages)

    def xors(self) -> PageBytes:
        """The XORs, one row a page; SizeMismatch when they do not unpack to that."""
        size = len(self.pages) * PAGE_SIZE
        try:
            unpacker = zlib.decompressobj()
            raw = unpacker.decompress(self.packed, size + 1)
        except zlib.error as err:
            raise SizeMismatch(f"diff batch does not unpack: {err}") from None
        if len(raw) != size or not unpacker.eof:
            raise SizeMismatch(f"diff batch of {len(self.pages)} pages does not unpack to {size}")
        return np.frombuffer(raw, np.uint8).reshape(len(self.pages), PAGE_SIZE)


def encode_diff(batch: DiffBatch) -> bytes:
    header = json.dumps({"guest_pages": batch.guest_pages, "pages": len(batch.pages)}).encode()
    pages = np.asarray(batch.pages, dtype="<i8").tobytes()
    return b"".join((_HEAD.pack(DIFF, len(header)), header, pages, batch.packed))


def _decode_diff(raw: bytes) -> DiffBatch:
    _, size = _HEAD.unpack_from(raw)
    try:
        h = json.loads(raw[_HEAD.size : _HEAD.size + size])
        guest_pages, count = int(h["guest_pages"]), int(h["pages"])
    except (ValueError, KeyError, TypeError) as err:
        raise SizeMismatch(f"diff batch header unreadable: {err}") from None
    at = _HEAD.size + size
    if count < 0 or len(raw) < at + 8 * count:
        raise SizeMismatch(f"diff batch too short for {count} pages")
    pages = np.frombuffer(raw, dtype="<i8", count=count, offset=at).astype(np.int64)
    return DiffBatch(guest_pages, pages, bytes(raw[at + 8 * count :]))


def encode_stale(batch: StaleBatch) -> bytes:
    header = json.dumps({"guest_pages": batch.guest_pages, "pages": batch.pages.tolist()})
    return _HEAD.pack(STALE, len(header.encode())) + header.encode()


def encode_mapped(batch: MappedBatch) -> bytes:
    header = json.dumps(
        {
            "guest_pages": batch.guest_pages,
            "disks": batch.disks,
            "pages": batch.pages.tolist(),
            "disk": batch.disk.tolist(),
            "blocks": batch.blocks.tolist(),
        }
    ).encode()
    return _HEAD.pack(MAPPED, len(header)) + header


def decode_any(raw: bytes) -> PageBatch | MappedBatch | StaleBatch | DiffBatch:
    if raw[:4] == DIFF and len(raw) >= _HEAD.size:
        return _decode_diff(raw)
    if raw[:4] == STALE:
        _, size = _HEAD.unpack_from(raw)
        try:
            h = json.loads(raw[_HEAD.size : _HEAD.size + size])
            return StaleBatch(int(h["guest_pages"]), np.asarray(h["pages"], np.int64))
        except (ValueError, KeyError, TypeError) as err:
            raise SizeMismatch(f"stale-page list unreadable: {err}") from None
    if raw[:4] != MAPPED:
        return decode(raw)
    _, size = _HEAD.unpack_from(raw)
    try:
        h = json.loads(raw[_HEAD.size : _HEAD.size + size])
        pages, disk, blocks = (np.asarray(h[k], np.int64) for k in ("pages", "disk", "blocks"))
        disks = [str(d) for d in h["disks"]]
        guest_pages = int(h["guest_pages"])
    except (ValueError, KeyError, TypeError) as err:
        raise SizeMismatch(f"mapped batch header unreadable: {err}") from None
    if not len(pages) == len(disk) == len(blocks) or (len(disk) and disk.max() >= len(disks)):
        raise SizeMismatch("mapped batch: pages, disks and blocks do not line up")
    return MappedBatch(guest_pages, pages, disks, disk, blocks)


def encode(batch: PageBatch) -> bytes:
    header = json.dumps({"guest_pages": batch.guest_pages, "pages": len(batch.pages)}).encode()
    return b"".join(
        (
            _HEAD.pack(MAGIC, len(header)),
            header,
            np.asarray(batch.pages, dtype="<i8").tobytes(),
            np.asarray(batch.zero, dtype=np.bool_).tobytes(),
            np.ascontiguousarray(batch.data).tobytes(),
        )
    )


def decode(raw: bytes) -> PageBatch:
    """A batch from its bytes; anything malformed raises SizeMismatch, saying what."""
    if len(raw) < _HEAD.size:
        raise SizeMismatch(f"a page batch needs at least {_HEAD.size} bytes, got {len(raw)}")
    magic, size = _HEAD.unpack_from(raw)
    if magic != MAGIC:
        raise SizeMismatch("not a page batch (bad magic)")
    try:
        header = json.loads(raw[_HEAD.size : _HEAD.size + size])
        guest_pages, count = int(header["guest_pages"]), int(header["pages"])
    except (ValueError, KeyError, TypeError) as err:
        raise SizeMismatch(f"page batch header unreadable: {err}") from None
    at = _HEAD.size + size
    if count < 0 or len(raw) < at + 9 * count:
        raise SizeMismatch(f"page batch too short for {count} pages")
    pages = np.frombuffer(raw, dtype="<i8", count=count, offset=at).astype(np.int64)
    at += 8 * count
    zero = np.frombuffer(raw, dtype=np.bool_, count=count, offset=at)
    at += count
    carried = count - int(np.count_nonzero(zero))
    if len(raw) - at != carried * PAGE_SIZE:
        raise SizeMismatch(
            f"page batch carries {len(raw) - at} bytes for {carried} pages of {PAGE_SIZE}"
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=at).reshape(carried, PAGE_SIZE)
    return PageBatch(guest_pages, pages, zero, data)
