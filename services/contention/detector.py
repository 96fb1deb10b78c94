"""Contention on one host, from its telemetry, with hysteresis: it starts only after
``ticks_on`` ticks in a row over the high bar and ends only after ``ticks_off`` ticks in
a row under the low bar, so a single spike (or a single quiet tick) changes nothing."""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from schemas.contention import Evidence
from schemas.host import HostTelemetry


@dataclass(frozen=True, slots=True)
class Thresholds:
    slowdown_on: float = 1.3  # the worst running VM's work takes 30% longer than alone
    slowdown_off: float = 1.1
    ready_on_ms: float = 300.0  # mean cpu.ready per tick
    ready_off_ms: float = 100.0
    ticks_on: int = 2
    ticks_off: int = 3


@dataclass(frozen=True, slots=True)
class Watch:
    """A host's state: ``episode`` while contended; ``streak`` counts the ticks in a row
    that argue for the other state."""

    episode: str | None = None
    streak: int = 0

    @property
    def contended(self) -> bool:
        return self.episode is not None


class Change(enum.Enum):
    DETECTED = "detected"
    CLEARED = "cleared"


def measure(sample: HostTelemetry, ticks: int = 1, workers: Collection[str] = ()) -> Evidence:
    """The host's evidence; when it runs tenant ``workers``, theirs alone: contention
    matters where it slows tasks, and a noisy neighbour is always slowed by itself."""
    running = [v for v in sample.vms if v.state == "on"]
    mine = [v for v in running if v.vm in workers]
    running = mine or running
    ready = sum(v.cpu_ready_ms for v in running) / len(running) if running else 0.0
    return Evidence(
        ticks=max(1, ticks),
        slowdown=max((v.slowdown for v in running), default=1.0),
        cpu_ready_ms=round(ready, 3),
        demand_ratio=round(sample.cpu_demand_mhz / max(1, sample.cpu_capacity_mhz), 4),
    )


def observe(
    watch: Watch, evidence: Evidence, host: str, tick: int, th: Thresholds
) -> tuple[Watch, Change | None]:
    if not watch.contended:
        over = evidence.slowdown >= th.slowdown_on or evidence.cpu_ready_ms >= th.ready_on_ms
        streak = watch.streak + 1 if over else 0
        if streak >= th.ticks_on:
            return Watch(episode=f"{host}-t{tick}"), Change.DETECTED
        return Watch(None, streak), None
    under = evidence.slowdown < th.slowdown_off and evidence.cpu_ready_ms < th.ready_off_ms
    streak = watch.streak + 1 if under else 0
    if streak >= th.ticks_off:
        return Watch(None, 0), Change.CLEARED
    return Watch(watch.episode, streak), None
