"""A guest whose execution can be recorded: each step is a deterministic function of its
memory, its seed and the inputs that reach it from outside.

Inputs are what a hypervisor's record/replay logs: network packets from outside (their
bytes and the step they arrive at), the values timer reads returned, device completions.
Each lands in the guest's receive ring and is folded into its state digest; the pages the
guest then writes are drawn from its seed, the step and that digest, so a guest given
other inputs (or none, or one fewer) writes other pages with other bytes from then on. A
packet is answered by a packet out whose bytes are read from memory: outputs depend on
memory alone.

The first ``DEVICE_PAGES`` pages of the guest are its device region: page 0 holds the
execution state (receive and transmit counts, digest), then the receive ring and the
transmit ring, a slot a page. Its workload writes only the pages after them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import xxhash

from services.hosts.memory.geometry import PAGE_SIZE
from services.hosts.memory.workload import Accesses, Workload

STATE_PAGE = 0
RING_SLOTS = 64
RX_RING = 1  # first page of the receive ring
TX_RING = RX_RING + RING_SLOTS
DEVICE_PAGES = TX_RING + RING_SLOTS

_MAGIC = b"VPLNEXEC"
_STATE = struct.Struct("<8sQQ16s")  # magic, inputs received, outputs sent, digest
_RX_HEADER = struct.Struct("<BxxxIQ")  # kind, payload length, step
_TX_HEADER = struct.Struct("<QQ")  # output sequence, step
MAX_PAYLOAD = PAGE_SIZE - _RX_HEADER.size
_REPLY_ECHO = 48  # bytes of the packet a reply carries back


class InputKind(IntEnum):
    PACKET = 1  # a network packet from outside; the guest answers each with one
    TIMER = 2  # the value a timer read returned
    DEVICE = 3  # a device completion's status


@dataclass(frozen=True, slots=True)
class GuestInput:
    """One nondeterministic input, as a record/replay log keeps it."""

    step: int
    kind: InputKind
    data: bytes

    def __post_init__(self) -> None:
        if self.step < 0 or len(self.data) > MAX_PAYLOAD:
            raise ValueError(
                f"an input arrives at a step >= 0 with at most {MAX_PAYLOAD} bytes, "
                f"not step {self.step} with {len(self.data)}"
            )


@dataclass(frozen=True, slots=True)
class GuestOutput:
    """A packet the guest sent: numbered from 1, without gaps, by the guest itself."""

    seq: int
    step: int
    data: bytes


@dataclass(slots=True)
class ExecutionState:
    received: int
    sent: int
    digest: bytes

    @classmethod
    def read(cls, page: bytes, seed: int) -> ExecutionState:
        """The state page; a guest that never executed (no magic yet) starts from its seed."""
        magic, received, sent, digest = _STATE.unpack_from(page)
        if magic != _MAGIC:
            return cls(0, 0, xxhash.xxh3_128_digest(b"vplane-exec" + seed.to_bytes(8, "little")))
        return cls(received, sent, digest)

    def fields(self) -> tuple[bytes, int, int, bytes]:
        return _MAGIC, self.received, self.sent, self.digest

    def bytes(self) -> bytes:
        return _STATE.pack(*self.fields())

    @property
    def entropy(self) -> int:
        return int.from_bytes(self.digest[:8], "little")


@dataclass(slots=True)
class Executed:
    """What one step did: the outputs it sent and the pages it wrote."""

    outputs: list[GuestOutput] = field(default_factory=list)
    written: int = 0


def execute_step(
    read_pages: Callable[[Sequence[int]], Sequence[bytes]],
    write: Callable[[Accesses], None],
    *,
    pages: int,
    seed: int,
    step: int,
    inputs: Sequence[GuestInput],
    workload: Workload,
    writes: int,
    reads: int,
) -> Executed:
    """Run step ``step`` of a guest of ``pages`` pages: its inputs, then its workload.

    ``read_pages`` reads pages as the guest holds them now; ``write`` applies the guest's
    accesses (through whatever the host keeps of what they overwrite). The inputs are
    taken on a copy of the device region, then its pages that changed are written back
    at once: one write a step, not four an input."""
    if pages <= DEVICE_PAGES:
        raise ValueError(f"a recorded guest needs more than {DEVICE_PAGES} pages, not {pages}")
    done = Executed()
    if inputs:
        region = DeviceRegion(read_pages(range(DEVICE_PAGES)))
        done.outputs = region.take(seed, step, inputs)
        write(region.changes())
        entropy = region.entropy(seed)
    else:
        [page] = read_pages([STATE_PAGE])
        state = ExecutionState.read(page, seed)
        if not state.received and not state.sent:
            # Its first step: the state page says from now on that it executes.
            write(Accesses.write(STATE_PAGE, state.bytes()))
        entropy = state.entropy
    accesses = guest_accesses(workload, pages, step, entropy, writes=writes, reads=reads)
    write(accesses)
    done.written = len(accesses.write_pages)
    return done


def guest_accesses(
    workload: Workload, pages: int, step: int, entropy: int, *, writes: int, reads: int
) -> Accesses:
    """The workload's accesses in step ``step`` once its state digest gives ``entropy``:
    outside the device region."""
    drawn = workload.step(pages - DEVICE_PAGES, step, writes=writes, reads=reads, entropy=entropy)
    return Accesses(
        drawn.write_pages + DEVICE_PAGES,
        drawn.write_offsets,
        drawn.write_data,
        drawn.read_pages + DEVICE_PAGES,
    )


class DeviceRegion:
    """A copy of a guest's device region, to work out what a step's inputs make it send
    before the step runs: the workload never writes there, so inputs alone change it."""

    def __init__(self, pages: Sequence[bytes]) -> None:
        if len(pages) != DEVICE_PAGES:
            raise ValueError(f"a device region is {DEVICE_PAGES} pages, not {len(pages)}")
        self._pages = [bytearray(page) for page in pages]
        self._changed: set[int] = set()

    def read_page(self, page: int) -> bytes:
        return bytes(self._pages[page])

    def changes(self) -> Accesses:
        """The pages written since it was read, whole: to write back into the guest."""
        changed = sorted(self._changed)
        rows = [np.frombuffer(bytes(self._pages[p]), np.uint8) for p in changed]
        contents = np.stack(rows) if rows else np.zeros((0, PAGE_SIZE), np.uint8)
        return Accesses.whole_pages(np.asarray(changed, np.int64), contents)

    def outputs(self, seed: int, inputs: Sequence[GuestInput]) -> list[GuestOutput]:
        """What the guest sends, step by step, given ``inputs`` (in step order)."""
        sent: list[GuestOutput] = []
        for given in inputs:
            sent += self.take(seed, given.step, [given])
        return sent

    def take(self, seed: int, step: int, inputs: Sequence[GuestInput]) -> list[GuestOutput]:
        """Step ``step``'s inputs taken, as the guest takes them: each into the receive
        ring and the state digest, each packet answered; what it sends. Written straight
        into the region's pages (thousands of inputs a second make a write an input
        through ``Accesses`` the cost of it all)."""
        pages, changed = self._pages, self._changed
        state_page = pages[STATE_PAGE]
        state = ExecutionState.read(bytes(state_page), seed)
        fresh = not state.received and not state.sent
        outputs = []
        for given in inputs:
            slot = RX_RING + state.received % RING_SLOTS
            record = _RX_HEADER.pack(given.kind, len(given.data), step) + given.data
            pages[slot][: len(record)] = record
            state.received += 1
            state.digest = xxhash.xxh3_128_digest(state.digest + record)
            _STATE.pack_into(state_page, 0, *state.fields())
            changed.update((slot, STATE_PAGE))
            if given.kind is InputKind.PACKET:
                state.sent += 1
                reply = _reply(state_page, pages[slot])
                out = TX_RING + (state.sent - 1) % RING_SLOTS
                sent = _TX_HEADER.pack(state.sent, step) + reply
                pages[out][: len(sent)] = sent
                _STATE.pack_into(state_page, 0, *state.fields())
                changed.add(out)
                outputs.append(GuestOutput(state.sent, step, reply))
        if fresh and not inputs:
            # Its first step: the state page says from now on that it executes.
            _STATE.pack_into(state_page, 0, *state.fields())
            changed.add(STATE_PAGE)
        return outputs

    def entropy(self, seed: int) -> int:
        """What the workload's next accesses are drawn from, as the region stands."""
        return ExecutionState.read(self.read_page(STATE_PAGE), seed).entropy


def _reply(state_page: bytearray, slot_page: bytearray) -> bytes:
    """A packet's answer, from memory: the digest of the state and the packet's slot, and
    the packet's first bytes back."""
    (length,) = struct.unpack_from("<I", slot_page, 4)
    echoed = bytes(slot_page[_RX_HEADER.size : _RX_HEADER.size + min(length, _REPLY_ECHO)])
    digest = xxhash.xxh3_128()
    digest.update(state_page)
    digest.update(slot_page)
    return digest.digest() + echoed[::-1]


def state_of(read_page: Callable[[int], bytes], seed: int) -> ExecutionState:
    return ExecutionState.read(read_page(STATE_PAGE), seed)
