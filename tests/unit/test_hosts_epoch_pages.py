"""FT checkpoint epochs on the hosts: pages sent ahead while the primary runs, candidates
sent as compressed XOR diffs, and a backup that writes an epoch's two flows at once;
through the real export and import and an in-memory data flow."""

from __future__ import annotations

import numpy as np
import pytest

from schemas import Envelope
from schemas.memory import ExportPages, ImportPages, PagesExported, PagesImported, Selection
from schemas.service import CommandRejected, RejectionCode
from services.hosts import wire
from services.hosts.epoch_pages import SETTLED_EPOCHS
from services.hosts.memory import Accesses, HostMemory, SizeMismatch, Workload
from services.hosts.transfers import export_pages
from shared.bus.memory import MemoryBus
from tests.unit.test_hosts_transfers import move, two_hosts


class Pair:
    """The primary ``src`` on h1 and its backup ``dst`` on h2, loaded with a full copy."""

    def __init__(self) -> None:
        self.h, self.bus = two_hosts(), MemoryBus()
        self.epochs = 0
        self.candidates: list[int] = []
        self.sent_ahead: PagesExported | None = None

    @property
    def src(self) -> HostMemory:
        return self.h.machine.memory["h1"]

    @property
    def dst(self) -> HostMemory:
        return self.h.machine.memory["h2"]

    async def load(self) -> None:
        flow = f"copy-{self.epochs}"
        [out] = await move(
            self.h,
            self.bus,
            ExportPages(host="h1", vm="src", flow=flow, selection=Selection.CHECKPOINT),
        )
        assert isinstance(out, PagesExported)
        await move(
            self.h, self.bus, ImportPages(host="h2", vm="dst", flow=flow, batches=out.batches)
        )
        assert self.src.checksum("src") == self.dst.checksum("dst")

    async def ahead(self) -> PagesExported:
        """The settled pages, sent while the primary runs."""
        cmd = ExportPages(
            host="h1",
            vm="src",
            flow=f"pre-{self.epochs}",
            selection=Selection.SETTLED,
            candidates=self.candidates,
        )
        [out] = await move(self.h, self.bus, cmd)
        assert isinstance(out, PagesExported)
        self.sent_ahead = out
        return out

    async def stunned(self) -> tuple[PagesExported, PagesImported]:
        """The epoch's end: every page still dirty, then the backup writes both flows."""
        flow, ahead = f"epoch-{self.epochs}", f"pre-{self.epochs}"
        self.epochs += 1
        cmd = ExportPages(
            host="h1",
            vm="src",
            flow=flow,
            selection=Selection.DIRTY,
            epoch=True,
            checksum=True,
            candidates=self.candidates,
        )
        [out] = await move(self.h, self.bus, cmd)
        assert isinstance(out, PagesExported)
        load = ImportPages(
            host="h2",
            vm="dst",
            flow=flow,
            batches=out.batches,
            ahead_flow=ahead,
            ahead_batches=self.sent_ahead.batches if self.sent_ahead else 0,
            candidates=True,
        )
        [imported] = await move(self.h, self.bus, load)
        assert isinstance(imported, PagesImported), imported
        self.candidates = imported.candidates
        self.sent_ahead = None
        return out, imported


def run(mem: HostMemory, step: int, writes: int = 200) -> None:
    """The primary's guest writes cache lines, mostly in its hot set."""
    pages = mem.spec("src").pages
    mem.apply("src", Workload(seed=7).step(pages, step, writes=writes, reads=0))


async def test_epochs_send_candidates_as_diffs_and_the_memories_stay_equal() -> None:
    """Pages written again and again travel as diffs once the backup names them; each
    epoch's memories are equal, and the diffs take far fewer bytes than whole pages."""
    p = Pair()
    await p.load()
    sent = whole = diff_pages = 0
    for step in range(12):
        run(p.src, step)
        pre = await p.ahead()
        out, imported = await p.stunned()
        assert out.checksum == imported.checksum == p.dst.checksum("dst")
        assert out.whole_bytes is not None
        assert pre.whole_bytes is not None
        assert imported.diff_pages == pre.diff_pages + out.diff_pages
        if step >= 2:
            sent += pre.bytes + out.bytes
            whole += pre.whole_bytes + out.whole_bytes
            diff_pages += imported.diff_pages
    assert diff_pages > 0
    assert sent < 0.5 * whole, (sent, whole)


async def test_pages_unwritten_for_several_epochs_go_ahead_of_the_stun() -> None:
    """A page written after several quiet epochs leaves while the primary runs; one
    written every epoch waits for the stun. The backup writes the early pages only with
    the epoch."""
    p = Pair()
    await p.load()
    quiet, busy = 3000, 10
    for epoch in range(SETTLED_EPOCHS + 1):
        p.src.write("src", busy, bytes([epoch + 1]) * 64)
        out = await p.ahead()
        assert out.pages == (epoch == 0)  # the first write follows quiet epochs
        await p.stunned()
    p.src.write("src", busy, b"\xee" * 64)
    p.src.write("src", quiet, b"\xff" * 64)
    out = await p.ahead()
    assert out.pages == 1
    out, imported = await p.stunned()
    assert out.pages == 1  # the busy page only
    assert imported.pages == 2
    assert imported.checksum == p.src.checksum("src")


async def test_a_backup_page_that_is_not_the_primarys_copy_shows_in_the_checksum() -> None:
    """A diff applies to what the backup holds: if that was changed behind the pair's
    back, the epoch's checksums differ (the FT service then resynchronises)."""
    p = Pair()
    await p.load()
    for step in range(4):
        run(p.src, step)
        await p.ahead()
        await p.stunned()
    page = next(c for c in p.candidates if c > 200)
    p.src.write("src", page, b"\x11" * 64, offset=128)
    flipped = bytes(255 - b for b in p.dst.read("dst", page)[:8])
    p.dst.write("dst", page, flipped)
    p.dst.collect_dirty("dst")
    await p.ahead()
    out, imported = await p.stunned()
    assert out.diff_pages >= 1
    assert out.checksum != imported.checksum


async def test_diff_batches_that_do_not_unpack_are_refused() -> None:
    h, bus = two_hosts(), MemoryBus()
    bad = wire.DiffBatch(h.machine.memory["h2"].spec("dst").pages, np.arange(2), b"not zlib")
    for cmd in (
        ImportPages(host="h2", vm="dst", flow="bad", batches=1, candidates=True),
        ImportPages(host="h2", vm="dst", flow="bad", batches=1),
    ):
        await bus.put_data("bad", [wire.encode_diff(bad)])
        [refused] = await move(h, bus, cmd)
        assert isinstance(refused, CommandRejected)
        assert refused.code == RejectionCode.SIZE_MISMATCH
    with pytest.raises(SizeMismatch, match="does not unpack"):
        bad.xors()


def test_a_candidate_must_be_a_page_of_the_vm() -> None:
    h = two_hosts()
    h.machine.memory["h1"].apply("src", Accesses.write(0, b"x"))
    cmd = ExportPages(
        host="h1", vm="src", flow="f", selection=Selection.SETTLED, candidates=[10**7]
    )
    outcome = export_pages(h.machine, Envelope.wrap(cmd, producer="test"))
    [refused] = outcome.events
    assert isinstance(refused, CommandRejected)
    assert refused.code == RejectionCode.PAGE_OUT_OF_RANGE
