"""Guest-memory mechanisms the hosts offer to policy services."""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import ConfigDict, Field

from schemas.base import Command, Event, Name, Part, Query, Reply, registry
from schemas.sharing import UnshareReason


class PagePair(Part):
    """A page of one VM and a page of another (or the same) VM on one host."""

    vm_a: Name
    page_a: int = Field(ge=0)
    vm_b: Name
    page_b: int = Field(ge=0)


@registry.register
class SharePages(Command):
    """Back each pair with one copy-on-write frame, after checking their bytes are equal."""

    host: Name
    # Bounded so that the answering event, which lists the pairs, stays a small message.
    pairs: list[PagePair] = Field(min_length=1, max_length=2_048)
    # A scan's proposal, its digests read a moment ago: pairs whose bytes differ now are
    # left out (counted), not a refusal of the whole batch.
    skip_differing: bool = False

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _PagesCommand(Command):
    """A mechanism applied to some pages of one VM."""

    host: Name
    vm: Name
    pages: list[int] = Field(min_length=1, max_length=2_048)

    def aggregate(self) -> str:
        return f"host/{self.host}"


class _PagesEvent(Event):
    host: Name
    vm: Name
    pages: list[int]

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class UnsharePages(_PagesCommand):
    """Give a VM private copies of these pages: on their home node, or (asked for a read
    pattern) on the node its vCPUs run on."""

    reason: UnshareReason = UnshareReason.REQUESTED


@registry.register
class PagesShared(Event):
    """``pairs`` now map one frame each; ``saved_frames`` were freed by it."""

    host: Name
    pairs: list[PagePair]
    saved_frames: int = Field(0, ge=0)
    already: int = Field(0, ge=0, description="pairs on one frame before: nothing to do")
    differing: int = Field(0, ge=0, description="pairs whose bytes differ: left out")

    def aggregate(self) -> str:
        # Its own subject: only what keeps guest memory (the hosts, the page-sharing
        # daemon) reads these long lists, not every follower of the hosts' events.
        return f"memory/{self.host}"


@registry.register
class PagesUnshared(_PagesEvent):
    """Each of ``pages`` is on a frame of its own; ``copied`` needed a copy for that."""

    reason: UnshareReason = UnshareReason.REQUESTED
    copied: int = Field(0, ge=0)
    node: int | None = Field(None, ge=0, description="where the copies went, if one node")

    def aggregate(self) -> str:
        return f"memory/{self.host}"


@registry.register
class GetVmMemory(Query):
    """A VM's memory: checksum, sizes and, if asked, per-page digests."""

    vm: Name
    digests: bool = False

    def aggregate(self) -> str:
        return "hosts"


@registry.register
class VmMemory(Reply):
    vm: Name
    host: Name
    mode: str
    pages: int
    resident_pages: int
    shared_pages: int
    swapped_pages: int
    used_pages: int
    checksum: str | None = Field(None, description="xxh3-128 of the guest's pages in order")
    mapped_pages: int = Field(0, ge=0, description="pages that hold a block of its disk")
    whole_large_pages: int = Field(
        0, ge=0, description="2 MiB large pages backed by one whole large page of the host"
    )
    digests: list[int] | None = Field(None, description="xxh3-64 per page, in guest order")


# Pages a target's faults ask for ahead of the push order, per run.
MAX_DEMAND = 4_096
# Pages a backup names as candidates for diffs (their numbers travel in commands and events).
MAX_CANDIDATES = 8_192


class Selection(enum.StrEnum):
    ALL = "all"
    DIRTY = "dirty"  # written since the last dirty or checkpoint export; clears the dirty bits
    CHECKPOINT = "checkpoint"  # every page, the base later dirty exports apply to
    # A migration's own: the pages at least ``min_heat`` hot (clears the dirty bits);
    # those sent before that were written since (the stop of a hybrid); and, after the
    # switchover, the ``demand``ed pages then up to ``budget`` more in the push order.
    # Each marks what it sends, and the last never sends a page twice.
    HOT = "hot"
    RESEND = "resend"
    POSTCOPY = "postcopy"
    # An FT checkpoint's, sent while the primary runs: the dirty pages its modification
    # history shows unwritten for several epochs (clears only their dirty bits).
    SETTLED = "settled"


@registry.register
class ExportPages(Command):
    """Send a VM's pages to a data flow, in batches; zero pages travel as markers."""

    host: Name
    vm: Name
    flow: Name
    selection: Selection = Selection.ALL
    pages: list[int] | None = Field(None, max_length=1_048_576, description="for 'all': these")
    batch: int = Field(128, ge=1, le=1024, description="pages per chunk on the data subject")
    checksum: bool = Field(False, description="report the guest's checksum as exported")
    mapped: bool = Field(
        False, description="send a page that holds a disk block as that block's name"
    )
    min_heat: float = Field(0.0, ge=0, description="for 'hot': the least heat a page has")
    demand: list[int] = Field(
        default_factory=list, max_length=MAX_DEMAND, description="for 'postcopy': first these"
    )
    budget: int = Field(
        0, ge=0, le=1_048_576, description="'postcopy': then so many more; 'resend': at most"
    )
    epoch: bool = Field(
        False,
        description="an FT checkpoint's 'dirty' export: it ends an epoch of the pages' history",
    )
    candidates: list[int] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="'dirty' (epoch) and 'settled': pages the backup holds that change little; "
        "those sent before travel as their XOR with that copy, compressed",
    )

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class PagesExported(Event):
    host: Name
    vm: Name
    flow: Name
    selection: Selection
    guest_pages: int = Field(ge=1)
    pages: int = Field(ge=0)
    zero_pages: int = Field(ge=0)
    batches: int = Field(ge=0)
    bytes: int = Field(ge=0)
    checksum: str | None = None
    # For a migration's own selections: pages not sent yet, and of those sent now, how
    # many were asked for by the target's faults.
    left: int | None = Field(None, ge=0)
    demanded: int = Field(0, ge=0)
    mapped_pages: int = Field(0, ge=0, description="sent as (disk, block): no page bytes")
    stale_pages: int = Field(
        0, ge=0, description="'resend': written since sent, left to follow the switchover"
    )
    diff_pages: int = Field(0, ge=0, description="sent as a compressed XOR with the backup's copy")
    whole_bytes: int | None = Field(
        None, ge=0, description="with diffs: the bytes the same pages take whole"
    )

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class ImportPages(Command):
    """Write the batches of a data flow into a VM of the same size."""

    host: Name
    vm: Name
    flow: Name
    batches: int = Field(ge=0)
    ahead_flow: Name | None = Field(
        None, description="first the batches of this flow (an FT epoch's pages sent ahead)"
    )
    ahead_batches: int = Field(0, ge=0)
    candidates: bool = Field(
        False, description="report the pages that changed little (an FT checkpoint's backup)"
    )

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class PagesImported(Event):
    host: Name
    vm: Name
    flow: Name
    pages: int = Field(ge=0)
    zero_pages: int = Field(ge=0)
    checksum: str
    mapped_pages: int = Field(0, ge=0, description="read from the shared datastore")
    diff_pages: int = Field(0, ge=0, description="applied as an XOR with the page held")
    candidates: list[int] = Field(
        default_factory=list,
        max_length=MAX_CANDIDATES,
        description="pages held whose last change touched few bytes: send them as diffs",
    )

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class SwapOutPages(_PagesCommand):
    """Move a VM's pages to its thin swap file, drawing blocks from the host's reservation."""


@registry.register
class SwapInPages(_PagesCommand):
    """Bring swapped pages of a VM back into frames, returning their swap blocks."""


@registry.register
class PagesSwappedOut(_PagesEvent):
    pass


@registry.register
class PagesSwappedIn(_PagesEvent):
    pass


class RunSteps(Part):
    """A run's workload steps: replaying them writes what the run wrote."""

    first_step: int = Field(ge=0)
    steps: int = Field(ge=0)
    writes_per_step: int = Field(ge=0)
    reads_per_step: int = Field(ge=0)


# A run's inputs at most, in bytes and in number: what a recorded guest's NIC is given
# in one run beyond these it drops (counted), so that the run's answer (its inputs and
# a packet out for each packet in) stays one message.
MAX_RUN_INPUT_BYTES = 64 * 1024
MAX_RUN_INPUTS = 512
# The largest input: a ring slot of the guest's page, less its header.
MAX_INPUT_BYTES = 4080


class _Bytes(Part):
    # Bytes travel as base64 in JSON.
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class LoggedInput(_Bytes):
    """One nondeterministic input of a recorded guest, as the FT log keeps it: what
    reached it from outside and at which step."""

    step: int = Field(ge=0)
    kind: Literal["packet", "timer", "device"]
    data: bytes = Field(max_length=MAX_INPUT_BYTES)


class SentPacket(_Bytes):
    """A packet a recorded guest sent, numbered by the guest from 1 without gaps."""

    seq: int = Field(ge=1)
    step: int = Field(ge=0)
    data: bytes = Field(max_length=MAX_INPUT_BYTES)


class LoggedRun(Part):
    """A recorded guest's run as its log entry keeps it: replaying these steps on these
    inputs makes of the same memory what the run made of it."""

    first_step: int = Field(ge=0)
    steps: int = Field(ge=0)
    writes_per_step: int = Field(ge=0)
    reads_per_step: int = Field(ge=0)
    inputs: list[LoggedInput] = Field(default_factory=list, max_length=MAX_RUN_INPUTS)


@registry.register
class RunVm(Command):
    """Run a guest's workload for ``seconds`` of emulated time at once (at its throttle and
    contention): a migration's round takes that long on the wire, and its guest goes on
    writing meanwhile. A migrating VM does no work in the hosts' ticks: only in these."""

    host: Name
    vm: Name
    seconds: float = Field(ge=0, le=3_600)
    # Names the run among the VM's (a migration's round): its answer says which it was.
    tag: Name
    # Instead of a run of ``seconds``: these steps exactly, as another host ran them (a
    # post-copy source checks what its target did to the memory it sent), stunned or not.
    replay: list[RunSteps] = Field(default_factory=list, max_length=4_096)
    checksum_at_start: bool = Field(
        False, description="report the guest's checksum as the run starts (a sync point)"
    )
    # A recorded guest (created with inputs): draw what reaches it from outside during
    # the run, and report it with what it sent (an FT log entry).
    record: bool = False
    # Or, instead of a run of ``seconds``: this logged run exactly (a backup replaying
    # its primary's log).
    logged: LoggedRun | None = None

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class VmRan(Event):
    """The run's workload steps (``first_step`` on) and the dirty pages the guest has now,
    those the run wrote among them; the fold runs the same steps."""

    host: Name
    vm: Name
    tag: Name
    seconds: float = Field(ge=0)
    first_step: int = Field(ge=0)
    steps: int = Field(ge=0)
    writes_per_step: int = Field(ge=0)
    reads_per_step: int = Field(ge=0)
    cpu_share: float = Field(ge=0, le=1, description="of its vCPUs it got: throttle, contention")
    dirty_pages: int = Field(ge=0)
    # After a post-copy switchover: pages the run touched before they had arrived (each
    # a remote fault, counted once), and those the target asks the source for first.
    faults: int = Field(0, ge=0)
    demand: list[int] = Field(default_factory=list, max_length=MAX_DEMAND)
    replayed: list[RunSteps] = Field(default_factory=list)
    checksum_at_start: str | None = None
    # A recorded guest: what reached it during the run (the fold runs on these) and the
    # packets it sent; packets its NIC dropped over the run's input budget.
    inputs: list[LoggedInput] = Field(default_factory=list)
    outputs: list[SentPacket] = Field(default_factory=list)
    dropped: int = Field(0, ge=0)

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


@registry.register
class FlipGuestBytes(Command):
    """Fault injection: invert ``count`` bytes of a guest page at ``offset``."""

    host: Name
    vm: Name
    page: int = Field(ge=0)
    offset: int = Field(ge=0, lt=4096)
    count: int = Field(1, ge=1, le=4096)

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class GuestBytesFlipped(Event):
    host: Name
    vm: Name
    page: int = Field(ge=0)
    offset: int = Field(ge=0)
    count: int = Field(ge=1)

    def aggregate(self) -> str:
        return f"vm/{self.vm}"
