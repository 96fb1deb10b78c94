"""Page sharing: what the page-sharing daemon asks the hosts, its policy, its record of
each scan pass, VM template forks, and the report ``vplane sharing`` shows."""

from __future__ import annotations

import enum

from pydantic import ConfigDict, Field, model_validator

from schemas.base import Command, Event, Name, Part, Query, Reply, Telemetry, registry

# Pages whose digests one reply carries: 16 bytes a page, base64, under the codec's limit.
MAX_DIGEST_PAGES = 10_240
# Shared pages whose reads one host's sample reports, hottest first.
MAX_SHARED_READS = 2_048
MAX_FORK_CHILDREN = 64


class PageRange(Part):
    vm: Name
    first: int = Field(ge=0)
    count: int = Field(ge=1, le=MAX_DIGEST_PAGES)


@registry.register
class GetPageDigests(Query):
    """The digests of pages as the host holds them now, and the frame each is on: two
    pages on one frame share it already."""

    host: Name
    ranges: list[PageRange] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _bounded(self) -> GetPageDigests:
        if sum(r.count for r in self.ranges) > MAX_DIGEST_PAGES:
            raise ValueError(f"at most {MAX_DIGEST_PAGES} pages a query")
        return self

    def aggregate(self) -> str:
        return f"host/{self.host}"


@registry.register
class PageDigests(Reply):
    """Per page of ``ranges`` (in order; clipped to each guest's size, a VM that is gone or
    has no bytes left out): its xxh3-64 and its frame (-1: swapped out), as little-endian
    uint64 and int64 arrays."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )

    host: Name
    ranges: list[PageRange]
    digests: bytes
    frames: bytes


class UnshareReason(enum.StrEnum):
    REQUESTED = "requested"  # an operator's or a test's UnsharePages
    READ_PATTERN = "read-pattern"  # read so often within the window that a copy pays
    REMOTE_READS = "remote-reads"  # read from another NUMA node than the frame's


class SharedPageReads(Part):
    """One VM's reads of shared pages in the last tick: ``nodes[i]`` is the NUMA node of
    page ``pages[i]``'s frame; a read is remote when it is not ``vcpu_node``."""

    vm: Name
    vcpu_node: int = Field(ge=0)
    pages: list[int]
    reads: list[int]
    nodes: list[int]

    @model_validator(mode="after")
    def _aligned(self) -> SharedPageReads:
        if not len(self.pages) == len(self.reads) == len(self.nodes):
            raise ValueError("pages, reads and nodes are read together, one entry each")
        return self


class ReadPolicy(Part):
    """When a VM's reads of a shared page earn it a private copy on its own node: ``reads``
    within ``window_ticks``, or ``remote_reads`` from another node (0: never for that);
    such a page is not shared again for ``hold_s`` emulated seconds."""

    enabled: bool = True
    reads: int = Field(64, ge=0)
    window_ticks: int = Field(8, ge=0)
    remote_reads: int = Field(16, ge=0)
    hold_s: float = Field(300.0, ge=0)


@registry.register
class SetSharingPolicy(Command):
    """Change the read-pattern policy (a zero window or read count is refused)."""

    policy: ReadPolicy

    def aggregate(self) -> str:
        return "sharing"


@registry.register
class SharingPolicySet(Event):
    policy: ReadPolicy

    def aggregate(self) -> str:
        return "sharing/policy"


@registry.register
class SharingPassCompleted(Event):
    """The daemon scanned every page of a host's full-memory VMs once (a KSM full scan)."""

    host: Name
    full_scans: int = Field(ge=1, description="passes over this host so far")
    pages_scanned: int = Field(ge=0)
    volatile: int = Field(ge=0, description="changed since the pass before: not compared")
    unique: int = Field(ge=0, description="compared, no other page holds the same bytes yet")
    proposed: int = Field(ge=0, description="pairs proposed for sharing in this pass")
    bookkeeping_bytes: int = Field(ge=0, description="the daemon's digests and indexes")
    # xxh3-64 over the pass's digests in scan order: two passes over unchanged memory agree.
    digest: str

    def aggregate(self) -> str:
        return f"sharing/{self.host}"


@registry.register
class ForkVm(Command):
    """Fork ``children`` from ``parent``: the parent becomes a template (quiesced,
    read-only) and each child maps every page of it copy-on-write, on its host."""

    parent: Name
    children: list[Name] = Field(min_length=1, max_length=MAX_FORK_CHILDREN)
    power_on: bool = Field(True, description="start the children running")

    @model_validator(mode="after")
    def _distinct(self) -> ForkVm:
        if len(set(self.children)) != len(self.children) or self.parent in self.children:
            raise ValueError("the children need distinct names, none the parent's")
        return self

    def aggregate(self) -> str:
        return "sharing"


@registry.register
class VmForkRequested(Event):
    """The daemon asked the parent's scheduler to place the children on its host."""

    parent: Name
    host: Name
    children: list[Name]

    def aggregate(self) -> str:
        return f"vm/{self.parent}"


@registry.register
class VmTemplated(Event):
    """The VM is a template now: quiesced and read-only, its pages the base of its forks."""

    host: Name
    vm: Name
    checksum: str = Field(description="xxh3-128 of its memory, which its children start with")

    def aggregate(self) -> str:
        return f"vm/{self.vm}"


class HostSharing(Part):
    """A host's sharing figures, as KSM reports them (``host`` is ``cluster`` for the sum)."""

    host: Name
    pages_shared: int = Field(0, ge=0, description="frames several pages map")
    pages_sharing: int = Field(0, ge=0, description="mappings beyond the first: frames saved")
    pages_unshared_again: int = Field(0, ge=0, description="copies made after sharing")
    pages_volatile: int = Field(0, ge=0, description="changed since the last pass")
    full_scans: int = Field(0, ge=0)
    pages_scanned: int = Field(0, ge=0)
    private_copies: int = Field(0, ge=0, description="made by the read-pattern policy")
    saved_mib: float = Field(0, ge=0)
    bookkeeping_mib: float = Field(0, ge=0)
    net_profit_mib: float = Field(0, description="saved less the daemon's bookkeeping")


@registry.register
class SharingTelemetry(Telemetry):
    """A host's sharing figures as the daemon sees them, after each piece of a pass."""

    figures: HostSharing

    def aggregate(self) -> str:
        return f"sharing/{self.figures.host}"


@registry.register
class ListSharing(Query):
    def aggregate(self) -> str:
        return "sharing"


@registry.register
class SharingReport(Reply):
    hosts: list[HostSharing]
    cluster: HostSharing
    policy: ReadPolicy
    pages_per_second: float = Field(ge=0, description="the scan budget per host")


class TreeNode(Part):
    vm: Name
    host: Name
    parent: Name | None
    template: bool
    shared_pages: int = Field(ge=0, description="pages on a frame other pages map too")
    private_pages: int = Field(ge=0, description="pages on a frame of their own")


@registry.register
class GetVmTree(Query):
    """Every forked VM and template, with its shared and private pages."""

    def aggregate(self) -> str:
        return "hosts"


@registry.register
class VmTree(Reply):
    nodes: list[TreeNode]
