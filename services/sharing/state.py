"""The page-sharing daemon's fold, pure: the VMs whose pages it may share, its policy,
and what the log says it did (passes, pages merged, private copies, pages on hold)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from schemas import Envelope, Message
from schemas.ha import VmRestarted
from schemas.host import HostCrashed, HostRegistered
from schemas.memory import PagesShared, PagesUnshared
from schemas.service import CommandRejected
from schemas.sharing import (
    ReadPolicy,
    SharingPassCompleted,
    SharingPolicySet,
    UnshareReason,
    VmForkRequested,
    VmTemplated,
)
from schemas.transfers import MigrationCompleted
from schemas.vm import MemoryMode, VmCreated, VmDestroyed, VmResized


@dataclass(frozen=True, slots=True)
class Guest:
    """A VM as the daemon sees it: where it is, its size in pages, how to fork it."""

    name: str
    host: str
    created: VmCreated
    pages: int
    fork_of: str | None = None
    templated: bool = False

    @property
    def full(self) -> bool:
        return self.created.memory_mode == MemoryMode.FULL


@dataclass(frozen=True, slots=True)
class HostRecord:
    """What the log says the daemon did on one host."""

    full_scans: int = 0
    pages_scanned: int = 0
    last_pass: SharingPassCompleted | None = None
    pairs_merged: int = 0
    private_copies: int = 0


@dataclass(frozen=True, slots=True)
class Sharing:
    hosts: frozenset[str] = frozenset()
    vms: Mapping[str, Guest] = field(default_factory=dict)
    policy: ReadPolicy = field(default_factory=ReadPolicy)
    records: Mapping[str, HostRecord] = field(default_factory=dict)
    # (vm, page) -> the emulated time until which the page is not shared again.
    held: Mapping[tuple[str, int], float] = field(default_factory=dict)
    # Children asked for and not created (or refused) yet.
    pending: frozenset[str] = frozenset()

    def on_host(self, host: str) -> list[Guest]:
        """The host's full-memory guests, in the order a pass scans them."""
        return sorted(
            (g for g in self.vms.values() if g.host == host and g.full), key=lambda g: g.name
        )

    def record(self, host: str) -> HostRecord:
        return self.records.get(host, HostRecord())


def evolve(state: Sharing, env: Envelope[Message]) -> Sharing:  # noqa: PLR0911, PLR0912 - one case an event
    event = env.data
    match event:
        case HostRegistered():
            return replace(state, hosts=state.hosts | {event.host})
        case VmCreated():
            guest = Guest(event.vm, event.host, event, _pages(event.mem_mib), event.fork_of)
            return replace(
                state, vms={**state.vms, event.vm: guest}, pending=state.pending - {event.vm}
            )
        case VmDestroyed():
            vms = {k: v for k, v in state.vms.items() if k != event.vm}
            held = {k: v for k, v in state.held.items() if k[0] != event.vm}
            return replace(state, vms=vms, held=held)
        case VmResized() if event.vm in state.vms:
            return _guest(state, event.vm, pages=_pages(event.mem_mib))
        case VmTemplated() if event.vm in state.vms:
            return _guest(state, event.vm, templated=True)
        case MigrationCompleted() if event.vm in state.vms:
            # Its pages crossed as bytes: a fork maps its template no more.
            return _guest(state, event.vm, host=event.target, fork_of=None)
        case VmRestarted() if event.vm in state.vms:
            return _guest(state, event.vm, host=event.host, fork_of=None)
        case HostCrashed():
            for name in event.vms_lost:
                if name in state.vms:
                    state = _guest(state, name, fork_of=None)
            return state
        case SharingPolicySet():
            return replace(state, policy=event.policy)
        case SharingPassCompleted():
            before = state.record(event.host)
            after = replace(
                before,
                full_scans=event.full_scans,
                pages_scanned=before.pages_scanned + event.pages_scanned,
                last_pass=event,
            )
            # Holds that ended are dropped as passes go by (at the log's time: a rebuild
            # drops the same).
            return replace(
                expire(state, env.sim_time), records={**state.records, event.host: after}
            )
        case PagesShared():
            before = state.record(event.host)
            after = replace(before, pairs_merged=before.pairs_merged + len(event.pairs))
            return replace(state, records={**state.records, event.host: after})
        case PagesUnshared() if event.reason is not UnshareReason.REQUESTED:
            before = state.record(event.host)
            after = replace(before, private_copies=before.private_copies + event.copied)
            until = env.sim_time + state.policy.hold_s
            held = {**state.held, **{(event.vm, p): until for p in event.pages}}
            return replace(state, records={**state.records, event.host: after}, held=held)
        case VmForkRequested():
            return replace(state, pending=state.pending | set(event.children))
        case CommandRejected() if event.about.startswith("vm/"):
            return replace(state, pending=state.pending - {event.about.removeprefix("vm/")})
    return state


def expire(state: Sharing, now: float) -> Sharing:
    """``state`` without the holds that ended by ``now``."""
    if not any(until <= now for until in state.held.values()):
        return state
    return replace(state, held={k: v for k, v in state.held.items() if v > now})


def _guest(state: Sharing, vm: str, **changes: object) -> Sharing:
    return replace(state, vms={**state.vms, vm: replace(state.vms[vm], **changes)})  # type: ignore[arg-type]


def _pages(mem_mib: int) -> int:
    """A guest's 4 KiB pages: hosts give guests whole 2 MiB large pages of 512 pages."""
    return max(1, -(-mem_mib // 2)) * 512
