"""The read-pattern policy: when reading a shared page costs a VM more than the page saves.

Each host's sample lists the reads its guests made of shared pages in the last tick, and
the NUMA node of each page's frame. A page read ``reads`` times within ``window_ticks``,
or ``remote_reads`` times from a node other than its frame's, gets a private copy on the
reader's node (``UnsharePages`` with the reason), and is not shared again for a while
(the fold holds it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from schemas.host import HostTelemetry
from schemas.memory import UnsharePages
from schemas.sharing import ReadPolicy, UnshareReason

# (vm, page) -> the ticks it was read in the window: (tick, reads, remote reads).
Window = dict[tuple[str, int], list[tuple[int, int, int]]]

_BATCH = 2_048  # pages an UnsharePages carries at most


@dataclass(frozen=True, slots=True)
class Seen:
    """What one sample leaves: the host's window, and the copies to ask for."""

    window: Window
    commands: list[UnsharePages]


def observe(
    window: Mapping[tuple[str, int], list[tuple[int, int, int]]],
    policy: ReadPolicy,
    sample: HostTelemetry,
    skip: Callable[[str, int], bool],
) -> Seen:
    """The host's window with ``sample``'s reads in it, and the private copies the policy
    asks for (none while it is off); ``skip`` says a page is held or asked for already."""
    oldest = sample.tick - max(1, policy.window_ticks) + 1
    after: Window = {
        key: kept for key, ticks in window.items() if (kept := [t for t in ticks if t[0] >= oldest])
    }
    for reads in sample.shared_reads:
        for page, n, node in zip(reads.pages, reads.reads, reads.nodes, strict=True):
            remote = n if node != reads.vcpu_node else 0
            after.setdefault((reads.vm, page), []).append((sample.tick, n, remote))
    wanted: dict[tuple[str, UnshareReason], list[int]] = {}
    if policy.enabled:
        for (vm, page), ticks in after.items():
            reason = _reason(policy, ticks)
            if reason is not None and not skip(vm, page):
                wanted.setdefault((vm, reason), []).append(page)
    commands = [
        UnsharePages(host=sample.host, vm=vm, pages=pages[i : i + _BATCH], reason=reason)
        for (vm, reason), pages in sorted(wanted.items())
        for i in range(0, len(pages), _BATCH)
    ]
    return Seen(after, commands)


def _reason(policy: ReadPolicy, ticks: list[tuple[int, int, int]]) -> UnshareReason | None:
    remote = sum(t[2] for t in ticks)
    if policy.remote_reads and remote >= policy.remote_reads:
        return UnshareReason.REMOTE_READS
    if policy.reads and sum(t[1] for t in ticks) >= policy.reads:
        return UnshareReason.READ_PATTERN
    return None


def policy_problem(policy: ReadPolicy, tick_s: float) -> str | None:
    """Why a policy makes no sense on ticks of ``tick_s`` emulated seconds, or None."""
    if policy.window_ticks < 1:
        return "a read pattern needs a window of at least 1 tick"
    if policy.reads < 1 and policy.remote_reads < 1:
        return "a read pattern needs a read count (or a remote read count) of at least 1"
    window_s = policy.window_ticks * tick_s
    if policy.enabled and policy.hold_s < window_s:
        return (
            f"a hold of {policy.hold_s:g} s is shorter than the window ({policy.window_ticks} "
            f"ticks of {tick_s:g} s): a copied page would be shared again before its reads "
            "could be counted"
        )
    return None


def default_policy(tick_s: float) -> ReadPolicy:
    """The default policy, its hold at least four windows long on ticks of ``tick_s``."""
    policy = ReadPolicy()
    hold = max(policy.hold_s, 4 * policy.window_ticks * tick_s)
    return policy.model_copy(update={"hold_s": hold})
