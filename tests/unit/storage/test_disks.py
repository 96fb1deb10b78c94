"""Virtual disks: seeded base content, sparse files, copy-on-write chains, crash-safe writes."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.hosts.memory.content import PageKind, content_layout, template_block
from services.hosts.memory.geometry import PageBytes
from services.hosts.storage.datastore import (
    BlockOutOfRange,
    CannotCommit,
    Chunk,
    CorruptDisk,
    Datastore,
    DatastoreFull,
    DiskExists,
    DiskHasChildren,
    InvalidArgument,
    UnknownDisk,
)
from services.hosts.storage.disk import (
    BLOCK_SIZE,
    DISK_PROFILE,
    DiskSpec,
    VirtualDisk,
    disk_files,
    disk_layout,
)

GIB = 2**30


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    return Datastore(tmp_path, 4 * GIB)


def everything(disk: VirtualDisk) -> PageBytes:
    return disk.read(np.arange(disk.spec.blocks))


def noise(seed: int, count: int) -> PageBytes:
    return np.random.default_rng(seed).integers(0, 256, (count, BLOCK_SIZE), dtype=np.uint8)


def kinds_of(spec: DiskSpec) -> npt.NDArray[np.uint8]:
    return disk_layout(spec.seed, spec.blocks).kinds


def test_a_new_disk_holds_zero_template_and_unique_blocks_in_the_profiles_shares(
    store: Datastore,
) -> None:
    """Zero blocks read as zeros and the rest do not, in about the 50/30/20 shares."""
    spec = DiskSpec("base", 8192, seed=5)
    data = everything(store.create_disk(spec))
    kinds = kinds_of(spec)
    zero = ~data.any(axis=1)

    assert np.array_equal(zero, kinds == PageKind.ZERO)
    shares = np.bincount(kinds, minlength=3) / spec.blocks
    assert shares == pytest.approx([DISK_PROFILE.zero, DISK_PROFILE.template, 0.2], abs=0.03)
    unique = data[kinds == PageKind.UNIQUE]
    assert len({xxhash.xxh3_64_intdigest(row.data) for row in unique}) == len(unique)


def test_a_template_block_is_the_template_images_page_at_its_index(store: Datastore) -> None:
    """The k-th template block holds page k of the image, as guest memory's template pages do."""
    spec = DiskSpec("base", 4096, template="win", seed=2)
    data = everything(store.create_disk(spec))
    layout = disk_layout(spec.seed, spec.blocks)
    blocks = np.flatnonzero(layout.kinds == PageKind.TEMPLATE)
    index = layout.template_index[blocks]

    assert np.array_equal(index, np.arange(len(blocks)))  # in order: the OS loaded its image
    image = np.concatenate([template_block("win", b) for b in range(int(index[-1]) // 512 + 1)])
    assert np.array_equal(data[blocks], image[index])


def test_disks_of_one_template_share_template_blocks_but_not_unique_ones(
    store: Datastore,
) -> None:
    """Equal template index, equal bytes; unique blocks differ between disks' seeds."""
    specs = [DiskSpec("a", 2048, seed=1), DiskSpec("b", 2048, seed=2), DiskSpec("c", 2048)]
    specs.append(DiskSpec("other", 2048, template="bsd", seed=1))
    datas = [everything(store.create_disk(spec)) for spec in specs]

    def by_template_index(which: int) -> PageBytes:
        rows: PageBytes = datas[which][kinds_of(specs[which]) == PageKind.TEMPLATE]
        return rows[:500]

    def unique_digests(which: int) -> set[int]:
        rows = datas[which][kinds_of(specs[which]) == PageKind.UNIQUE]
        return {xxhash.xxh3_64_intdigest(row.data) for row in rows}

    assert not np.array_equal(kinds_of(specs[0]), kinds_of(specs[1]))
    assert np.array_equal(by_template_index(0), by_template_index(1))
    assert np.array_equal(by_template_index(0), by_template_index(2))
    assert not (by_template_index(0) == by_template_index(3)).all(axis=1).any()
    assert not unique_digests(0) & unique_digests(1)
    assert not unique_digests(0) & unique_digests(2)


def test_a_disks_layout_is_not_its_vms_memory_layout() -> None:
    """A disk and the memory of a VM made from the same seed put their kinds in other places."""
    disk = disk_layout(7, 4096).kinds
    memory = content_layout(7, DISK_PROFILE, 4096).kinds
    assert np.mean(disk == memory) < 0.6  # independent draws agree on ~0.5²+0.3²+0.2² = 38%


def test_blocks_read_the_same_in_any_order_and_grouping(store: Datastore) -> None:
    """A shuffled, repeating selection returns the rows of a full read, wherever they live."""
    base = store.create_disk(DiskSpec("base", 1500, seed=3))
    base.write(np.arange(0, 1500, 7), noise(1, len(range(0, 1500, 7))))
    child = base.child("child")
    child.write(np.arange(3, 1500, 11), noise(2, len(range(3, 1500, 11))))
    full = everything(child)
    picks = np.random.default_rng(4).integers(0, 1500, 3000)

    assert np.array_equal(child.read(picks), full[picks])
    assert child.read([]).shape == (0, BLOCK_SIZE)
    assert child.checksum() == xxhash.xxh3_128_hexdigest(full.data)


def test_creating_a_1_gib_disk_allocates_almost_nothing(store: Datastore) -> None:
    """No block is written at creation: the data file and map are holes, however big."""
    used = store.used_bytes()
    started = time.perf_counter()
    disk = store.create_disk(DiskSpec("big", GIB // BLOCK_SIZE))
    elapsed = time.perf_counter() - started

    assert disk.allocated_bytes() < 64 * 1024
    assert store.used_bytes() - used < 64 * 1024
    assert elapsed < 0.5
    assert disk_files(store, "big").data.stat().st_size == GIB
    assert disk.read([GIB // BLOCK_SIZE - 1]).shape == (1, BLOCK_SIZE)


def test_written_blocks_read_back_and_survive_a_reopen(store: Datastore) -> None:
    """Writes read back in this process and in a new Datastore over the same directory."""
    disk = store.create_disk(DiskSpec("vm-1.disk_0", 1024, seed=9))
    before = everything(disk)
    blocks = np.array([1000, 3, 4, 5, 512, 0])
    disk.write(blocks, noise(1, 6))
    expected = before.copy()
    expected[blocks] = noise(1, 6)

    reopened = Datastore(store.root, store.capacity_bytes).open_disk("vm-1.disk_0")
    assert np.array_equal(everything(disk), expected)
    assert np.array_equal(everything(reopened), expected)
    assert reopened.checksum() == disk.checksum() == xxhash.xxh3_128_hexdigest(expected.data)
    assert reopened.spec == disk.spec
    assert disk.written() == reopened.written() == 6
    assert 6 * BLOCK_SIZE <= disk.allocated_bytes() < 64 * BLOCK_SIZE


def test_the_last_write_of_a_repeated_block_wins(store: Datastore) -> None:
    """One write naming a block twice leaves the later data, as two writes in a row would."""
    disk = store.create_disk(DiskSpec("d", 16))
    data = noise(3, 3)
    disk.write([5, 9, 5], data)
    assert np.array_equal(disk.read([5, 9]), data[[2, 1]])
    assert disk.written() == 2


def test_a_copy_on_write_chain_reads_its_own_writes_else_its_nearest_ancestors(
    store: Datastore,
) -> None:
    """Four levels, each written: a level reads its blocks, else its parent's, ..., else base.

    A parent's checksum does not move when its descendants write.
    """
    base = store.create_disk(DiskSpec("l0", 256, seed=4))
    expected = [everything(base)]
    writes = [np.arange(0, 200), np.arange(50, 120), np.array([0, 60, 255]), np.arange(100, 256)]
    levels = [base]
    sums: list[str] = []
    for depth, blocks in enumerate(writes):
        if depth:
            levels.append(levels[-1].child(f"l{depth}"))
            expected.append(expected[-1].copy())
        levels[-1].write(blocks, noise(depth, len(blocks)))
        expected[-1][blocks] = noise(depth, len(blocks))
        sums.append(levels[-1].checksum())

    chain = store.open_disk("l3")
    for depth, disk in enumerate(levels):
        assert np.array_equal(everything(disk), expected[depth]), f"level {depth}"
        assert disk.checksum() == sums[depth]
        assert disk.written() == len(writes[depth])
    assert chain.parent is not None
    assert chain.checksum() == sums[3]
    assert chain.parent.parent is not None
    assert np.array_equal(everything(chain.parent.parent), expected[1])
    assert [store.children(f"l{depth}") for depth in range(4)] == [["l1"], ["l2"], ["l3"], []]


def test_a_disk_with_children_refuses_write_and_delete_and_says_why(store: Datastore) -> None:
    """A snapshot's parent is read-only: a write or delete would change its children."""
    base = store.create_disk(DiskSpec("base", 64))
    base.write([1], noise(0, 1))
    base.child("snap-a")
    base.child("snap-b")
    before = base.checksum()

    with pytest.raises(DiskHasChildren, match=r"cannot write to disk 'base'.*snap-a, snap-b"):
        base.write([1, 2], noise(1, 2))
    with pytest.raises(DiskHasChildren, match="cannot delete disk 'base'"):
        base.delete()
    assert base.checksum() == before
    assert all(path.exists() for path in disk_files(store, "base"))


def test_a_child_made_by_another_process_makes_the_parent_read_only(store: Datastore) -> None:
    """Children are read from the datastore, not from what this process made."""
    mine = store.create_disk(DiskSpec("base", 64))
    Datastore(store.root, store.capacity_bytes).open_disk("base").child("theirs")
    with pytest.raises(DiskHasChildren, match="theirs"):
        mine.write([0], noise(0, 1))


def test_deleting_a_disk_removes_its_files_and_frees_its_parent(store: Datastore) -> None:
    """Delete takes the three files away; the parent is writable once its last child is gone."""
    base = store.create_disk(DiskSpec("base", 64))
    child = base.child("child")
    child.write([3], noise(0, 1))
    child.delete()

    assert not any(path.exists() for path in disk_files(store, "child"))
    assert store.children("base") == []
    base.write([3], noise(1, 1))
    with pytest.raises(UnknownDisk):
        child.read([0])
    with pytest.raises(UnknownDisk):
        store.open_disk("child")


def test_commit_merges_a_child_into_its_parent(store: Datastore) -> None:
    """After commit the parent reads what the child read; the child's files are gone."""
    base = store.create_disk(DiskSpec("base", 1200, seed=8))
    base.write(np.arange(0, 1200, 3), noise(0, 400))
    child = base.child("child")
    child.write(np.arange(0, 1200, 2), noise(1, 600))  # over base blocks and fresh ones
    expected = child.checksum()

    merged = child.commit()

    assert merged is base
    assert base.checksum() == expected
    assert Datastore(store.root, store.capacity_bytes).open_disk("base").checksum() == expected
    assert not any(path.exists() for path in disk_files(store, "child"))
    assert base.written() == len(set(range(0, 1200, 3)) | set(range(0, 1200, 2)))
    base.write([1], noise(2, 1))  # writable again
    with pytest.raises(UnknownDisk):
        child.checksum()


def test_commit_needs_a_parent_whose_only_child_is_this_disk(store: Datastore) -> None:
    """A base disk has nothing to merge into; a parent with two children cannot take one."""
    base = store.create_disk(DiskSpec("base", 64))
    with pytest.raises(CannotCommit, match="base disk has no parent"):
        base.commit()
    one, two = base.child("one"), base.child("two")
    one.write([0], noise(0, 1))
    before = base.checksum()
    with pytest.raises(CannotCommit, match="has children \\['one', 'two'\\]"):
        one.commit()
    one.child("grandchild")
    two.delete()
    with pytest.raises(DiskHasChildren, match="cannot commit disk 'one'"):
        one.commit()
    assert base.checksum() == before
    assert all(path.exists() for path in disk_files(store, "one"))


def test_a_write_that_would_overflow_the_datastore_changes_nothing(tmp_path: Path) -> None:
    """DatastoreFull before any byte is written: content, map and files are as they were."""
    store = Datastore(tmp_path, GIB)
    disk = store.create_disk(DiskSpec("d", 256, seed=1))
    disk.write(np.arange(8), noise(0, 8))
    tight = Datastore(tmp_path, store.used_bytes() + 16 * BLOCK_SIZE)
    disk = tight.open_disk("d")
    files = disk_files(tight, "d")
    before = (disk.checksum(), files.map.read_bytes(), disk.allocated_bytes())

    with pytest.raises(DatastoreFull, match=r"of .* bytes used"):
        disk.write(np.arange(4, 40), noise(1, 36))

    assert (disk.checksum(), files.map.read_bytes(), disk.allocated_bytes()) == before
    assert tight.open_disk("d").checksum() == before[0]
    disk.write(np.arange(8), noise(2, 8))  # blocks it holds are rewritten in place: no room


def test_a_crash_between_data_and_map_reads_as_before_the_write(
    store: Datastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map is the commit point: blocks written but not yet in the map are not seen."""
    parent = store.create_disk(DiskSpec("parent", 128, seed=6))
    parent.write(np.arange(10, 20), noise(0, 10))
    disk = parent.child("disk")
    disk.write([0, 1], noise(1, 2))
    before = disk.checksum()
    files = disk_files(store, "disk")
    replace_file = Datastore.write_atomically

    def crash_at_map(self: Datastore, path: Path, chunks: Iterable[Chunk]) -> str:
        if path == files.map:
            raise SystemExit("crashed before the map was replaced")
        return replace_file(self, path, chunks)

    monkeypatch.setattr(Datastore, "write_atomically", crash_at_map)
    with pytest.raises(SystemExit):
        disk.write(np.arange(12, 30), noise(2, 18))
    monkeypatch.undo()

    on_file = np.fromfile(files.data, np.uint8).reshape(-1, BLOCK_SIZE)
    assert np.array_equal(on_file[12:30], noise(2, 18))  # the data did land
    assert disk.checksum() == before
    assert Datastore(store.root, store.capacity_bytes).open_disk("disk").checksum() == before


def test_unknown_existing_and_invalid_disks_are_refused(store: Datastore) -> None:
    """Typed errors for a missing name, a taken name, a bad spec and a block out of range."""
    with pytest.raises(UnknownDisk, match="'nope'"):
        store.open_disk("nope")
    with pytest.raises(UnknownDisk):
        store.children("nope")
    with pytest.raises(UnknownDisk):
        store.open_disk("../disks/nope")
    disk = store.create_disk(DiskSpec("d", 8))
    with pytest.raises(DiskExists):
        store.create_disk(DiskSpec("d", 16))
    with pytest.raises(DiskExists):
        disk.child("d")
    with pytest.raises(BlockOutOfRange, match="block 8 is outside disk 'd'"):
        disk.read([0, 8])
    with pytest.raises(BlockOutOfRange):
        disk.write([-1], noise(0, 1))
    with pytest.raises(InvalidArgument, match=r"\(2, 4096\) uint8"):
        disk.write([0, 1], noise(0, 1))
    with pytest.raises(InvalidArgument):
        disk.read(np.array([0.5]))
    assert disk.written() == 0


@pytest.mark.parametrize(
    ("name", "blocks", "seed"),
    [("", 1, 0), (".hidden", 1, 0), ("a/b", 1, 0), ("x" * 129, 1, 0), ("d", 0, 0), ("d", 1, -1)],
)
def test_a_spec_that_cannot_be_a_disk_is_refused(name: str, blocks: int, seed: int) -> None:
    """Names are file-safe and bounded; a disk has blocks; seeds fit the hash seed."""
    with pytest.raises(InvalidArgument):
        DiskSpec(name, blocks, seed=seed)


def test_a_damaged_disk_is_reported_when_opened(store: Datastore) -> None:
    """A wrong-sized map, an unreadable header or a loop of parents is named, not read."""
    store.create_disk(DiskSpec("short-map", 64))
    disk_files(store, "short-map").map.write_bytes(b"\x00")
    store.create_disk(DiskSpec("bad-header", 64))
    disk_files(store, "bad-header").header.write_bytes(b"{not json")
    store.create_disk(DiskSpec("loop", 64)).child("loop-child")
    header = disk_files(store, "loop").header
    header.write_text(header.read_text().replace('"parent": null', '"parent": "loop-child"'))

    with pytest.raises(CorruptDisk, match=r"'short-map'.*does not match"):
        store.open_disk("short-map")
    with pytest.raises(CorruptDisk, match=r"'bad-header'.*unreadable header"):
        store.open_disk("bad-header")
    with pytest.raises(CorruptDisk, match="loop-child <- loop <- loop-child"):
        store.open_disk("loop-child")


# A property: any sequence of writes, snapshots, reopens and commits on a small chain reads
# as a plain model does, one full copy of each level's content.

WRITE, SNAPSHOT, REOPEN, COMMIT = range(4)
step = st.tuples(
    st.sampled_from([WRITE, WRITE, WRITE, SNAPSHOT, REOPEN, COMMIT]),
    st.lists(st.integers(0, 63), min_size=1, max_size=12),
    st.integers(0, 2**16),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=12))
def test_a_chain_reads_as_a_model_of_full_copies(steps: list[tuple[int, list[int], int]]) -> None:
    """Writes go to the leaf; a snapshot adds a child (up to depth 3); commit merges the leaf."""
    with tempfile.TemporaryDirectory() as folder:
        store = Datastore(Path(folder), GIB)
        chain = [store.create_disk(DiskSpec("level0", 64, seed=3))]
        model = [everything(chain[0])]
        for number, (action, blocks, seed) in enumerate(steps):
            leaf = chain[-1]
            if action == WRITE:
                data = noise(seed << 4 | number, len(blocks))  # no two writes write the same
                leaf.write(blocks, data)
                for block, row in zip(blocks, data, strict=True):  # in order: the last wins
                    model[-1][block] = row
            elif action == SNAPSHOT and len(chain) < 4:
                chain.append(leaf.child(f"level{len(chain)}"))
                model.append(model[-1].copy())
            elif action == REOPEN:
                chain = reopened(Datastore(Path(folder), GIB), leaf.name)
            elif action == COMMIT and len(chain) > 1:
                chain = [*chain[:-2], leaf.commit()]
                model[-2:] = [model[-1]]
            assert np.array_equal(everything(chain[-1]), model[-1])
        for disk, content in zip(chain, model, strict=True):
            assert np.array_equal(everything(disk), content), disk.name
            assert disk.checksum() == xxhash.xxh3_128_hexdigest(content.data)


def reopened(store: Datastore, leaf: str) -> list[VirtualDisk]:
    """A chain opened from its files, base first."""
    chain = [store.open_disk(leaf)]
    while (parent := chain[0].parent) is not None:
        chain.insert(0, parent)
    return chain


def test_a_chain_s_written_blocks_make_a_flat_copy_of_it(tmp_path: Path) -> None:
    """A base disk of the same spec holding the blocks written anywhere in a chain reads
    exactly as the chain does: how a checkpoint copies its disk."""
    store = Datastore(tmp_path, 1 << 30)
    base = store.create_disk(DiskSpec("base", 2048, "linux", 3))
    base.write(np.asarray([1, 5]), np.full((2, BLOCK_SIZE), 7, np.uint8))
    child = base.child("child")
    child.write(np.asarray([5, 900]), np.full((2, BLOCK_SIZE), 9, np.uint8))
    blocks = child.written_in_chain()
    assert blocks.tolist() == [1, 5, 900]
    flat = store.create_disk(DiskSpec("flat", 2048, "linux", 3))
    flat.write(blocks, child.read(blocks))
    assert flat.checksum() == child.checksum()
