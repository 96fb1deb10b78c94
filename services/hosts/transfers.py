"""Page export and import over a data flow: the hosts' edge where bulk bytes move."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from schemas import Envelope, Event, Message
from schemas.memory import ExportPages, ImportPages, PagesExported, PagesImported, Selection
from schemas.service import CommandRejected, RejectionCode
from services.hosts import wire
from services.hosts.epoch_pages import BackupPages
from services.hosts.machine import Machine
from services.hosts.memory import (
    PAGE_SIZE,
    AccountingOnly,
    BelowUsedMemory,
    BytesDiffer,
    HostMemory,
    MemoryModelError,
    PageBatch,
    PageOutOfRange,
    SizeMismatch,
    UnknownVm,
)
from services.hosts.memory.geometry import Ints
from services.hosts.migrating import Outgoing
from services.hosts.page_cache import VmPageCache
from services.hosts.storage.datastore import StorageError
from services.hosts.wire import DiffBatch, MappedBatch, StaleBatch
from shared.bus.protocol import DataFlows
from shared.outcome import Outcome, answer

_CODES: list[tuple[type[MemoryModelError], RejectionCode]] = [
    (PageOutOfRange, RejectionCode.PAGE_OUT_OF_RANGE),
    (SizeMismatch, RejectionCode.SIZE_MISMATCH),
    (AccountingOnly, RejectionCode.ACCOUNTING_ONLY),
    (UnknownVm, RejectionCode.UNKNOWN_VM),
    (BytesDiffer, RejectionCode.BYTES_DIFFER),
    (BelowUsedMemory, RejectionCode.BELOW_USED_MEMORY),
]


def code_of(err: MemoryModelError) -> RejectionCode:
    return next((code for kind, code in _CODES if isinstance(err, kind)), RejectionCode.WRONG_STATE)


def export_pages(machine: Machine, env: Envelope[Message]) -> Outcome:
    """The pages asked for, as data for the flow, and PagesExported once they are there."""
    cmd = env.data
    assert isinstance(cmd, ExportPages)
    mem = machine.memory[cmd.host]
    left: int | None = None
    demanded = 0
    stale: Ints = np.zeros(0, np.int64)
    diffs: list[DiffBatch] = []
    whole_bytes: int | None = None
    try:
        if cmd.epoch or cmd.selection is Selection.SETTLED:
            batches, diffs, whole_bytes = _epoch(machine, mem, cmd)
        elif cmd.selection is Selection.DIRTY:
            batches = mem.export_dirty(cmd.vm, cmd.batch)
        elif cmd.selection is Selection.CHECKPOINT:
            machine.epoch_pages.forget(cmd.vm)
            batches = mem.export_checkpoint(cmd.vm, cmd.batch)
        elif cmd.selection in MIGRATING:
            out = machine.outgoing.get(cmd.vm)
            if out is None or out.host != cmd.host:
                why = f"{cmd.vm} is not migrating from {cmd.host}: no {cmd.selection} pages"
                return answer(env, CommandRejected.of(env, RejectionCode.WRONG_STATE, why))
            chosen, demanded, stale = _migrating(mem, out, cmd)
            batches = mem.export_pages(cmd.vm, chosen, cmd.batch)
            left = out.left
        else:
            pages = None if cmd.pages is None else np.asarray(cmd.pages, dtype=np.int64)
            batches = mem.export_pages(cmd.vm, pages, cmd.batch)
        chunks: list[PageBatch] = list(batches)
    except MemoryModelError as err:
        return answer(env, CommandRejected.of(env, code_of(err), str(err)))
    mapped: list[MappedBatch] = []
    cache = machine.page_caches.vms.get(cmd.vm)
    if cmd.mapped and cache is not None and cache.mapped:
        chunks, mapped = _split_mapped(chunks, cache)
    zero = sum(int(np.count_nonzero(b.zero)) for b in chunks)
    exported = PagesExported(
        host=cmd.host,
        vm=cmd.vm,
        flow=cmd.flow,
        selection=cmd.selection,
        guest_pages=mem.spec(cmd.vm).pages,
        pages=sum(len(b.pages) for b in chunks)
        + sum(len(d.pages) for d in diffs)
        + sum(len(m.pages) for m in mapped),
        zero_pages=zero,
        batches=len(chunks) + len(diffs) + len(mapped) + -(-len(stale) // STALE_CHUNK),
        bytes=sum(b.wire_bytes for b in chunks)
        + sum(d.wire_bytes for d in diffs)
        + sum(m.wire_bytes for m in mapped),
        checksum=mem.checksum(cmd.vm) if cmd.checksum else None,
        left=left,
        demanded=demanded,
        mapped_pages=sum(len(m.pages) for m in mapped),
        stale_pages=len(stale),
        diff_pages=sum(len(d.pages) for d in diffs),
        whole_bytes=whole_bytes,
    )
    guest_pages = mem.spec(cmd.vm).pages
    forget = [
        wire.encode_stale(StaleBatch(guest_pages, stale[at : at + STALE_CHUNK]))
        for at in range(0, len(stale), STALE_CHUNK)
    ]
    data = {
        cmd.flow: [
            *(wire.encode(b) for b in chunks),
            *map(wire.encode_diff, diffs),
            *map(wire.encode_mapped, mapped),
            *forget,
        ]
    }
    return Outcome(events=[exported], cause=env, data=data)


def _epoch(
    machine: Machine, mem: HostMemory, cmd: ExportPages
) -> tuple[Iterator[PageBatch], list[DiffBatch], int]:
    """An FT checkpoint's pages: ahead of the stun, the settled dirty ones; at the stun,
    every dirty one, ending the epoch. Candidates with a copy travel as diffs; also the
    bytes the pages take whole."""
    pages = mem.spec(cmd.vm).pages
    primary = machine.epoch_pages.primary(cmd.vm, pages)
    candidates = mem.check_pages(cmd.vm, cmd.candidates)
    dirty = mem.collect_dirty(cmd.vm, clear=False)
    ahead = cmd.selection is Selection.SETTLED
    chosen = primary.settled(dirty) if ahead else dirty
    batches = list(mem.export_pages(cmd.vm, chosen, cmd.batch))  # checks before any change
    if ahead:
        primary.sent_ahead(chosen)
    else:
        primary.close_epoch(dirty, candidates)
    mem.clear_dirty(cmd.vm, chosen)
    sent = primary.send(batches, candidates)
    return (
        (b for b in sent if isinstance(b, PageBatch)),
        [b for b in sent if isinstance(b, DiffBatch)],
        sum(b.wire_bytes for b in batches),
    )


MIGRATING = (Selection.HOT, Selection.RESEND, Selection.POSTCOPY)
# Stale pages named in one chunk of a flow (a chunk stays well under a message's limit).
STALE_CHUNK = 16_384


def _split_mapped(
    chunks: list[PageBatch], cache: VmPageCache
) -> tuple[list[PageBatch], list[MappedBatch]]:
    """The pages that hold a disk block (and are not zero: a marker is cheaper still)
    leave their batches, to travel as the block's name."""
    kept: list[PageBatch] = []
    mapped: list[MappedBatch] = []
    for b in chunks:
        held = cache.block[b.pages] >= 0
        held &= ~b.zero
        if not held.any():
            kept.append(b)
            continue
        carried = ~b.zero
        rows = held[carried]  # which of the batch's data rows are mapped pages
        if (~held).any():
            kept.append(PageBatch(b.guest_pages, b.pages[~held], b.zero[~held], b.data[~rows]))
        pages = b.pages[held]
        mapped.append(
            MappedBatch(
                b.guest_pages, pages, list(cache.disks), cache.disk[pages], cache.block[pages]
            )
        )
    return kept, mapped


def _migrating(mem: HostMemory, out: Outgoing, cmd: ExportPages) -> tuple[Ints, int, Ints]:
    """A migration's own selection, marked sent (checked first: the guest is the VM's):
    the pages, how many of them the target asked for, and those it must forget."""
    mem.spec(cmd.vm)
    none = np.zeros(0, np.int64)
    if cmd.selection is Selection.HOT:
        mem.collect_dirty(cmd.vm)
        return out.hot(mem.heat(cmd.vm), cmd.min_heat), 0, none
    if cmd.selection is Selection.RESEND:
        again, back = out.resend(mem.collect_dirty(cmd.vm), cmd.budget)
        return again, 0, back
    pages, demanded = out.postcopy(np.asarray(cmd.demand, dtype=np.int64), cmd.budget)
    return pages, demanded, none


async def read_flow(flows: DataFlows, env: Envelope[Message]) -> list[bytes]:
    """The chunks an ImportPages names, read before it is decided (outside the lock)."""
    cmd = env.data
    assert isinstance(cmd, ImportPages)
    ahead = []
    if cmd.ahead_flow is not None:
        ahead = [chunk async for chunk in flows.read_data(cmd.ahead_flow, cmd.ahead_batches)]
    return [*ahead, *[chunk async for chunk in flows.read_data(cmd.flow, cmd.batches)]]


def import_pages(machine: Machine, env: Envelope[Message], chunks: list[bytes]) -> list[Event]:
    cmd = env.data
    assert isinstance(cmd, ImportPages)
    mem = machine.memory[cmd.host]
    pages = diffs = 0
    epoch: BackupPages | None = None
    try:
        if cmd.candidates:
            epoch = machine.epoch_pages.backup(cmd.vm, mem.spec(cmd.vm).pages)
        else:
            machine.epoch_pages.forget(cmd.vm)
        batches, mapped = _decoded(machine, cmd, chunks, epoch is not None)
        zero = sum(int(np.count_nonzero(b.zero)) for b in batches if isinstance(b, PageBatch))
        if epoch is None:
            for batch in batches:
                assert isinstance(batch, PageBatch)
                mem.import_pages(cmd.vm, batch)
                if (incoming := machine.incoming.get(cmd.vm)) is not None:
                    incoming.arrive(mem, cmd.vm, batch.pages)
                pages += len(batch.pages)
        else:
            pages, diffs = epoch.apply(mem, cmd.vm, batches)
    except (MemoryModelError, StorageError) as err:
        code = code_of(err) if isinstance(err, MemoryModelError) else RejectionCode.WRONG_STATE
        return [CommandRejected.of(env, code, str(err))]
    return [
        PagesImported(
            host=cmd.host,
            vm=cmd.vm,
            flow=cmd.flow,
            pages=pages,
            zero_pages=zero,
            checksum=mem.checksum(cmd.vm),
            mapped_pages=mapped,
            diff_pages=diffs,
            candidates=[] if epoch is None else epoch.candidates(),
        )
    ]


def _decoded(
    machine: Machine, cmd: ImportPages, chunks: list[bytes], diffs: bool
) -> tuple[list[PageBatch | DiffBatch], int]:
    """The flow's batches, mapped pages read from their disks (and how many); stale pages
    are told to the incoming migration."""
    batches: list[PageBatch | DiffBatch] = []
    mapped = 0
    for chunk in chunks:
        decoded = wire.decode_any(chunk)
        if isinstance(decoded, StaleBatch):
            if (incoming := machine.incoming.get(cmd.vm)) is not None:
                incoming.gone(decoded.pages)
        elif isinstance(decoded, DiffBatch) and not diffs:
            raise SizeMismatch("pages sent as diffs come only to an FT checkpoint's backup")
        elif isinstance(decoded, MappedBatch):
            batches.append(_read_blocks(machine, decoded))
            machine.page_caches.of(cmd.vm, decoded.guest_pages).map_each(
                decoded.pages, [decoded.disks[d] for d in decoded.disk.tolist()], decoded.blocks
            )
            mapped += len(decoded.pages)
        else:
            batches.append(decoded)
    return batches, mapped


def _read_blocks(machine: Machine, batch: MappedBatch) -> PageBatch:
    """The mapped pages' bytes, read from their disks on the shared datastore."""
    if machine.disks.root is None:
        raise StorageError("pages arrived as disk blocks, but this process has no datastore")
    contents = np.empty((len(batch.pages), PAGE_SIZE), np.uint8)
    for index, name in enumerate(batch.disks):
        rows = batch.disk == index
        if rows.any():
            disk = machine.disks.datastore().open_disk(name)
            contents[rows] = disk.read(batch.blocks[rows])
    return PageBatch.of(batch.guest_pages, batch.pages, contents)
