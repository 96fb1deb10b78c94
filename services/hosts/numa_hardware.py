"""NUMA moves as a host's hardware runs them: the vCPUs move as the move starts, the memory
some pages a tick, and every tick of a move reports how local the guest's accesses are.

Moves are the hardware's state, not a projection of the log. Rebuilding, a move the log
started starts again (its vCPUs move), and one the log says completed moves the rest of its
pages at once: the ticks that moved them are not repeated, and the host holds the VM where
the log says it went. A move in flight when the process stopped goes on from where the
regenerated memory is, counting its pages afresh.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from schemas.numa import (
    MoveVmNuma,
    NumaOrder,
    VmNumaMoveCompleted,
    VmNumaMoveProgress,
    VmNumaMoveStarted,
)
from services.hosts.memory import HostMemory
from services.hosts.memory.geometry import Ints
from services.hosts.memory.workload import Accesses
from services.hosts.numa_moves import NumaOutlook

# Ticks a move goes on reporting once its last page moved: the share it leaves settles.
SETTLE_TICKS = 3

# A move's progress on one tick, and its completion if it ended there.
NumaReport = tuple[VmNumaMoveProgress, VmNumaMoveCompleted | None]


@dataclass(eq=False)
class _Move:
    host: str
    node: int
    pages_per_tick: int
    queue: Ints  # the pages to move, in the order they go
    share_before: float | None
    whole_before: int
    at: int = 0  # queue entries done (moved, or skipped as shared or swapped meanwhile)
    moved: int = 0
    ticks: int = 0
    settled: int = 0  # ticks reported with nothing left to move
    share_after: float | None = None
    stalled: bool = False  # the node had no free frame for what was left
    done: bool = False  # reported complete; gone once the log says so

    @property
    def left(self) -> int:
        return len(self.queue) - self.at


class NumaHardware:
    def __init__(self) -> None:
        self._moves: dict[str, _Move] = {}
        # Each working guest's local share on its last tick, and on this one.
        self._last: dict[str, float | None] = {}
        self._now: dict[str, float | None] = {}
        self._reports: list[NumaReport] = []

    def apply(
        self, mem: HostMemory, event: VmNumaMoveStarted | VmNumaMoveCompleted, live: bool
    ) -> None:
        if isinstance(event, VmNumaMoveStarted):
            mem.move_vcpus(event.vm, event.node)
            hot_first = event.order == NumaOrder.HOT_FIRST
            queue = mem.numa_pages(event.vm, event.node, hot_first=hot_first)
            self._moves[event.vm] = _Move(
                event.host,
                event.node,
                event.pages_per_tick,
                queue,
                event.local_share_before,
                mem.whole_large_pages(event.vm),
            )
            return
        move = self._moves.pop(event.vm, None)
        if move is not None and not live:
            rest = move.queue[move.at :]
            mem.move_pages(event.vm, rest[: mem.free_frames(move.node)], move.node)

    def forget(self, vm: str) -> None:
        """The VM's memory is gone or made again: a move of it ends unreported."""
        self._moves.pop(vm, None)
        self._last.pop(vm, None)
        self._now.pop(vm, None)

    def outlook(self, memory: Mapping[str, HostMemory], cmd: MoveVmNuma) -> NumaOutlook | None:
        mem = memory.get(cmd.host)
        if mem is None or cmd.vm not in mem.vms:
            return None
        return NumaOutlook(
            vcpu_node=mem.vcpu_node(cmd.vm),
            pages=len(mem.numa_pages(cmd.vm, cmd.node, hot_first=False)),
            free_frames=mem.free_frames(cmd.node),
            moving=cmd.vm in self._moves,
            local_share=self._last.get(cmd.vm),
        )

    def step(self, memory: Mapping[str, HostMemory], up: Collection[str]) -> None:
        """Each move's next pages, on the hosts that are up (before their guests work)."""
        for vm, move in self._moves.items():
            mem = memory.get(move.host)
            if mem is None or move.host not in up or move.done or not move.left:
                continue
            take = min(move.pages_per_tick, mem.free_frames(move.node))
            if not take:
                move.stalled = True
                continue
            pages = move.queue[move.at : move.at + take]
            # A shrink since the move started may have dropped some of them.
            move.moved += mem.move_pages(vm, pages[pages < mem.spec(vm).pages], move.node)
            move.at += len(pages)

    def saw(self, mem: HostMemory, vm: str, accesses: Accesses) -> None:
        """A working guest's accesses of this tick, before they apply."""
        pages = np.concatenate([accesses.write_pages, accesses.read_pages])
        self._now[vm] = self._last[vm] = mem.local_share(vm, pages)

    def report(self, memory: Mapping[str, HostMemory], tick: int, up: Collection[str]) -> None:
        """This tick's progress of each move on a host that is up; the completion of those
        that are over."""
        now, self._now = self._now, {}
        for vm, move in self._moves.items():
            mem = memory.get(move.host)
            if mem is None or move.host not in up or move.done:
                continue
            move.ticks += 1
            share = now.get(vm)
            move.share_after = share if share is not None else move.share_after
            progress = VmNumaMoveProgress(
                host=move.host,
                vm=vm,
                tick=tick,
                pages_moved=move.moved,
                pages_left=move.left,
                local_share=_rounded(share),
            )
            if not move.left:
                move.settled += 1
            move.done = move.settled > SETTLE_TICKS or move.stalled
            completed = _completed(vm, move, mem.whole_large_pages(vm)) if move.done else None
            self._reports.append((progress, completed))

    def drain(self) -> list[NumaReport]:
        found, self._reports = self._reports, []
        return found


def _completed(vm: str, move: _Move, whole_after: int) -> VmNumaMoveCompleted:
    return VmNumaMoveCompleted(
        host=move.host,
        vm=vm,
        node=move.node,
        pages_moved=move.moved,
        pages_left=move.left,
        large_pages_whole_before=move.whole_before,
        large_pages_whole_after=whole_after,
        ticks=move.ticks,
        local_share_before=_rounded(move.share_before),
        local_share_after=_rounded(move.share_after),
    )


def _rounded(share: float | None) -> float | None:
    return None if share is None else round(share, 4)
