"""Random sequences of memory operations keep the host's books and the guests' bytes right."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xxhash
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from services.hosts.memory import (
    DEFAULT_PROFILE,
    EMPTY_PROFILE,
    PAGE_SIZE,
    AccountingOnly,
    BelowUsedMemory,
    BytesDiffer,
    ContentProfile,
    HostMemory,
    MemoryMode,
    OutOfFrames,
    PageNotResident,
    SwapFull,
    VmSpec,
    Workload,
)
from services.hosts.memory.geometry import Ints, PageBytes
from tests.unit.memory.support import content_end, state

NODES = [3, 3]
SWAP_BLOCKS = 96


class HostMachine(RuleBasedStateMachine):
    """A small host; ``model`` holds each full VM's expected bytes (None: accounting-only),
    ``written`` each accounting-only VM's expected used pages (content extent and writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.host = HostMemory(NODES, swap_blocks=SWAP_BLOCKS)
        self.model: dict[str, PageBytes | None] = {}
        self.written: dict[str, int] = {}
        self.created = 0

    # Helpers

    def pick(self, data: st.DataObject, *, full: bool = False) -> str:
        names = sorted(vm for vm, model in self.model.items() if model is not None or not full)
        return data.draw(st.sampled_from(names), label="vm")

    def pages(self, data: st.DataObject, vm: str, most: int = 12) -> list[int]:
        page = st.integers(0, self.host.spec(vm).pages - 1)
        return data.draw(st.lists(page, min_size=1, max_size=most), label="pages")

    def refused(self, error: type[Exception], operation: Callable[[], object]) -> None:
        before = state(self.host)
        try:
            operation()
        except error:
            assert state(self.host) == before
        else:
            raise AssertionError(f"expected {error.__name__}")

    def has_full(self) -> bool:
        return any(model is not None for model in self.model.values())

    def entries(self, vm: str, pages: list[int]) -> Ints:
        return self.host.page_table(vm).reshape(-1)[pages]

    def used_pages(self, vm: str) -> int:
        model = self.model[vm]
        if model is None:
            return self.written[vm]
        filled = np.flatnonzero(model.any(axis=1))
        return int(filled[-1]) + 1 if len(filled) else 0

    def free_large_pages(self) -> int:
        return sum(node.free_large_pages for node in self.host.usage().nodes)

    # Rules

    @initialize(seed=st.integers(0, 2))
    def first_vm(self, seed: int) -> None:
        self.create(2, seed, "linux", DEFAULT_PROFILE, accounting=False)

    @rule(
        large_pages=st.integers(1, 2),
        seed=st.integers(0, 2),
        template=st.sampled_from(["linux", "bsd"]),
        profile=st.sampled_from([DEFAULT_PROFILE, DEFAULT_PROFILE, EMPTY_PROFILE]),
        accounting=st.sampled_from([False, False, True]),
    )
    def create(
        self,
        large_pages: int,
        seed: int,
        template: str,
        profile: ContentProfile,
        accounting: bool,
    ) -> None:
        mode = MemoryMode.ACCOUNTING if accounting else MemoryMode.FULL
        spec = VmSpec(f"vm{self.created}", large_pages, seed, template, profile, mode)
        if self.free_large_pages() < large_pages:
            self.refused(OutOfFrames, lambda: self.host.create_vm(spec))
            return
        self.host.create_vm(spec)
        self.created += 1
        self.model[spec.name] = None if accounting else self.contents(spec.name)
        if accounting:
            self.written[spec.name] = content_end(spec)

    def contents(self, vm: str) -> PageBytes:
        out = np.zeros((self.host.spec(vm).pages, PAGE_SIZE), np.uint8)
        for batch in self.host.export_pages(vm):
            out[batch.pages[~batch.zero]] = batch.data
        return out

    @precondition(lambda self: self.model)
    @rule(
        data=st.data(),
        offset=st.integers(0, PAGE_SIZE - 8),
        payload=st.binary(min_size=1, max_size=8),
    )
    def write(self, data: st.DataObject, offset: int, payload: bytes) -> None:
        vm = self.pick(data)
        page = self.pages(data, vm, most=1)[0]
        entry = int(self.entries(vm, [page])[0])
        needs_frame = entry < 0 or self.host.frame_refcounts()[entry] > 1
        if self.model[vm] is None:
            self.refused(AccountingOnly, lambda: self.host.write(vm, page, payload, offset))
        elif needs_frame and self.host.usage().free_frames == 0:
            self.refused(OutOfFrames, lambda: self.host.write(vm, page, payload, offset))
        else:
            self.host.write(vm, page, payload, offset)
            model = self.model[vm]
            assert model is not None
            model[page, offset : offset + len(payload)] = np.frombuffer(payload, np.uint8)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 3), step=st.integers(0, 3))
    def run_workload(self, data: st.DataObject, seed: int, step: int) -> None:
        vm = self.pick(data)
        accesses = Workload(seed).step(self.host.spec(vm).pages, step, writes=6, reads=6)
        try:
            self.host.apply(vm, accesses)
        except OutOfFrames:
            return
        model = self.model[vm]
        if model is None:
            self.written[vm] = max(self.written[vm], int(accesses.write_pages.max()) + 1)
        else:
            for page, offset, row in zip(
                accesses.write_pages, accesses.write_offsets, accesses.write_data, strict=True
            ):
                model[page, offset : offset + len(row)] = row

    @precondition(has_full)
    @rule(data=st.data())
    def share(self, data: st.DataObject) -> None:
        vm_a, vm_b = self.pick(data, full=True), self.pick(data, full=True)
        page_a, page_b = self.pages(data, vm_a, 1)[0], self.pages(data, vm_b, 1)[0]
        model_a, model_b = self.model[vm_a], self.model[vm_b]
        assert model_a is not None
        assert model_b is not None

        def share() -> int:
            return self.host.share(vm_a, page_a, vm_b, page_b)

        if (self.entries(vm_a, [page_a]) < 0).any() or (self.entries(vm_b, [page_b]) < 0).any():
            self.refused(PageNotResident, share)
        elif not np.array_equal(model_a[page_a], model_b[page_b]):
            self.refused(BytesDiffer, share)
        else:
            used = self.host.used_frames()
            freed = share()
            assert self.host.used_frames() == used - freed

    @precondition(has_full)
    @rule(data=st.data())
    def share_twins(self, data: st.DataObject) -> None:
        vm_a, vm_b = self.pick(data, full=True), self.pick(data, full=True)
        digests_a, digests_b = self.host.page_digests(vm_a), self.host.page_digests(vm_b)
        resident_a = self.host.page_table(vm_a).reshape(-1) >= 0
        resident_b = self.host.page_table(vm_b).reshape(-1) >= 0
        lookup = {int(d): p for p, d in enumerate(digests_a.tolist()) if resident_a[p]}
        pairs = [(lookup[d], p) for p, d in enumerate(digests_b.tolist()) if d in lookup]
        pairs = [(a, b) for a, b in pairs if resident_b[b]][: data.draw(st.integers(1, 40))]
        if pairs:
            used = self.host.used_frames()
            freed = self.host.share_pages(vm_a, [a for a, _ in pairs], vm_b, [b for _, b in pairs])
            assert self.host.used_frames() == used - freed

    @precondition(has_full)
    @rule(data=st.data())
    def unshare(self, data: st.DataObject) -> None:
        vm = self.pick(data, full=True)
        page = self.pages(data, vm, 1)[0]
        entry = int(self.entries(vm, [page])[0])
        if entry >= 0 and self.host.frame_refcounts()[entry] > 1:
            if self.host.usage().free_frames == 0:
                self.refused(OutOfFrames, lambda: self.host.unshare(vm, page))
                return
            assert self.host.unshare(vm, page)
        else:
            assert not self.host.unshare(vm, page)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def swap_out(self, data: st.DataObject) -> None:
        vm = self.pick(data)
        pages = sorted(set(self.pages(data, vm, most=30)))
        resident = int((self.entries(vm, pages) >= 0).sum())
        if resident > self.host.usage().swap_free:
            self.refused(SwapFull, lambda: self.host.swap_out(vm, pages))
        else:
            assert self.host.swap_out(vm, pages) == resident

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        vm = self.pick(data)
        pages = sorted(set(self.pages(data, vm, most=30)))
        swapped = int((self.entries(vm, pages) < 0).sum())
        if swapped > self.host.usage().free_frames:
            self.refused(OutOfFrames, lambda: self.host.swap_in(vm, pages))
        else:
            assert self.host.swap_in(vm, pages) == swapped

    @precondition(has_full)
    @rule(data=st.data(), batch=st.integers(1, 600))
    def migrate(self, data: st.DataObject, batch: int) -> None:
        source = self.pick(data, full=True)
        spec = VmSpec.empty(f"vm{self.created}", self.host.spec(source).large_pages)
        try:
            self.host.create_vm(spec)
        except OutOfFrames:
            return
        self.created += 1
        for part in self.host.export_pages(source, batch=batch):
            self.host.import_pages(spec.name, part)
        model = self.model[source]
        assert model is not None
        self.model[spec.name] = model.copy()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), large_pages=st.integers(1, 3))
    def resize(self, data: st.DataObject, large_pages: int) -> None:
        vm = self.pick(data)
        current, used = self.host.spec(vm).large_pages, self.used_pages(vm)
        assert self.host.used_pages(vm) == used
        if large_pages * 512 < used:
            self.refused(BelowUsedMemory, lambda: self.host.resize_vm(vm, large_pages))
            return
        if large_pages - current > self.free_large_pages():
            self.refused(OutOfFrames, lambda: self.host.resize_vm(vm, large_pages))
            return
        dropped = self.host.page_table(vm)[large_pages:].reshape(-1)
        frames, drops = np.unique(dropped[dropped >= 0], return_counts=True)
        freed = int(np.count_nonzero(self.host.frame_refcounts()[frames] == drops))
        used_frames, blocks = self.host.used_frames(), len(self.host.swap_blocks_in_use())

        self.host.resize_vm(vm, large_pages)

        added = max(0, large_pages - current) * 512
        assert self.host.used_frames() == used_frames + added - freed
        assert len(self.host.swap_blocks_in_use()) == blocks - np.count_nonzero(dropped < 0)
        assert self.host.spec(vm).large_pages == large_pages
        assert self.host.used_pages(vm) == used
        model = self.model[vm]
        if model is not None:
            grown = np.zeros((large_pages * 512, PAGE_SIZE), np.uint8)
            kept = min(len(model), len(grown))
            grown[:kept] = model[:kept]
            self.model[vm] = grown

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def destroy(self, data: st.DataObject) -> None:
        vm = self.pick(data)
        self.host.destroy_vm(vm)
        del self.model[vm]
        self.written.pop(vm, None)

    # Invariants

    @invariant()
    def every_refcount_equals_its_mappers(self) -> None:
        tables = [self.host.page_table(vm).reshape(-1) for vm in self.model]
        resident = np.concatenate([np.zeros(0, np.int64), *(t[t >= 0] for t in tables)])
        total = sum(NODES) * 512
        assert np.array_equal(np.bincount(resident, minlength=total), self.host.frame_refcounts())

    @invariant()
    def no_page_is_lost(self) -> None:
        """Every swapped entry owns one block in use; every block in use has one owner."""
        tables = [self.host.page_table(vm).reshape(-1) for vm in self.model]
        blocks = np.concatenate([np.zeros(0, np.int64), *(~t[t < 0] for t in tables)])
        assert np.array_equal(np.sort(blocks), self.host.swap_blocks_in_use())
        assert len(blocks) <= SWAP_BLOCKS

    @invariant()
    def free_and_used_frames_add_up(self) -> None:
        usage = self.host.usage()
        in_use = int(np.count_nonzero(self.host.frame_refcounts()))
        assert usage.used_frames == in_use
        assert usage.used_frames + usage.free_frames == usage.total_frames
        assert sum(node.used_frames for node in usage.nodes) == usage.used_frames

    @invariant()
    def checksums_match_the_expected_bytes(self) -> None:
        for vm, model in self.model.items():
            if model is not None:
                assert self.host.checksum(vm) == xxhash.xxh3_128(model.data).hexdigest()


HostMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHostMachine = HostMachine.TestCase
