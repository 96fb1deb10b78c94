"""Workload profiles: what a VM wants to do at a given emulated time, as a pure function.

Each profile is a frozen description plus a kernel that evaluates many VMs (or many times)
at once. Every random choice is a counter-based draw keyed by the profile's ``seed`` and an
epoch index derived from ``sim_time``, so the same seed always gives the same series.
CPU levels are shares of the VM's vCPUs, memory levels shares of its configured memory;
network rates are per direction, storage rates are reads plus writes (half each).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import numpy as np

from services.hosts.resources.arrays import F64, U64, DemandArrays
from services.hosts.resources.errors import ResourceModelError
from services.hosts.resources.noise import uniform

# Jitter and noise change once per emulated second, whatever the tick length.
NOISE_S = 1.0
# Outside its shuffle a Hadoop task reads and writes this share of its shuffle rates.
HADOOP_QUIET_IO = 0.1


def _validate(profile: Workload, *periods: str) -> None:
    for f in fields(profile):
        if f.name != "seed" and getattr(profile, f.name) < 0:
            raise ResourceModelError(f"{profile!r}: {f.name} must not be negative")
    for name in periods:
        if getattr(profile, name) <= 0:
            raise ResourceModelError(f"{profile!r}: {name} must be positive")


@dataclass(frozen=True, slots=True)
class Steady:
    """A constant level with a little seeded jitter."""

    cpu: float = 0.5
    mem: float = 0.5
    net_mbps: float = 10.0
    storage_mbs: float = 5.0
    jitter: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)


@dataclass(frozen=True, slots=True)
class Bursty:
    """Idle, then a burst, once per ``on_s + off_s`` cycle; each burst's length is jittered
    by up to ``jitter`` of ``on_s`` and each VM's cycle starts at a seeded phase. I/O runs at
    its rates in a burst and scales down with the CPU level between bursts."""

    idle_cpu: float = 0.05
    burst_cpu: float = 0.95
    mem: float = 0.5
    on_s: float = 60.0
    off_s: float = 240.0
    jitter: float = 0.5
    net_mbps: float = 100.0
    storage_mbs: float = 50.0
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "on_s")


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A sinusoid over an emulated day, peaking at ``peak_s`` shifted by up to ± ``spread_s``
    per seed, plus noise. Network and storage follow the CPU level and reach their rates at
    the peak."""

    mean_cpu: float = 0.4
    swing: float = 0.3
    mem: float = 0.6
    net_mbps: float = 50.0
    storage_mbs: float = 20.0
    day_s: float = 86_400.0
    peak_s: float = 14 * 3_600.0
    spread_s: float = 3_600.0
    noise: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "day_s")


@dataclass(frozen=True, slots=True)
class HadoopWorker:
    """A task worker: each ``task_s`` epoch a seeded share (``busy_min``..1) of its task
    slots runs, each wanting ``cpu_per_slot`` cores; the last ``shuffle_share`` of an epoch
    shuffles, moving ``shuffle_net_mbps`` and ``shuffle_storage_mbs`` per running slot."""

    slots: int = 4
    cpu_per_slot: float = 1.0
    mem: float = 0.7
    task_s: float = 30.0
    busy_min: float = 0.5
    shuffle_share: float = 0.3
    shuffle_net_mbps: float = 100.0
    shuffle_storage_mbs: float = 40.0
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "task_s")


@dataclass(frozen=True, slots=True)
class NoisyNeighbour:
    """Saturates every vCPU and pushes network and storage far past what a host has."""

    cpu: float = 1.0
    mem: float = 0.9
    net_mbps: float = 20_000.0
    storage_mbs: float = 8_000.0
    jitter: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self)


Workload = Steady | Bursty | Diurnal | HadoopWorker | NoisyNeighbour

# A kernel gets the stacked parameters of one profile type (a float array per field but
# ``seed``), the seeds, sim_time, vCPUs and memory (MiB), all broadcast against each other;
# its outputs broadcast too (a term that ignores time stays one value per VM).
Columns = Mapping[str, F64]
Kernel = Callable[[Columns, U64, F64, F64, F64], DemandArrays]


def _demand(cpu: F64, mem: F64, net: F64, storage: F64) -> DemandArrays:
    net = np.maximum(net, 0.0)
    half = np.maximum(storage / 2, 0.0)
    return DemandArrays(np.maximum(cpu, 0.0), np.maximum(mem, 0.0), net, net, half, half)


def _epoch(seed: U64, t: F64, length: F64) -> tuple[F64, F64]:
    """Which ``length``-long epoch ``t`` falls in and how far into it (0..1), with each
    seed's epochs starting at its own phase so VMs do not move in lockstep."""
    x = t + uniform(seed, 0, np.zeros(1)) * length
    index = np.floor(x / length)
    return index, x / length - index


def _steady(p: Columns, seed: U64, t: F64, vcpus: F64, mem: F64) -> DemandArrays:
    k = 1.0 + p["jitter"] * (2.0 * uniform(seed, 1, np.floor(t / NOISE_S)) - 1.0)
    return _demand(
        np.clip(p["cpu"] * k, 0.0, 1.0) * vcpus,
        np.clip(p["mem"] * k, 0.0, 1.0) * mem,
        p["net_mbps"] * k,
        p["storage_mbs"] * k,
    )


def _bursty(p: Columns, seed: U64, t: F64, vcpus: F64, mem: F64) -> DemandArrays:
    cycle = p["on_s"] + p["off_s"]
    index, into = _epoch(seed, t, cycle)
    burst = p["on_s"] * (1.0 + p["jitter"] * (2.0 * uniform(seed, 1, index) - 1.0))
    on = into * cycle < np.minimum(burst, cycle)
    level = np.where(on, p["burst_cpu"], p["idle_cpu"])
    idle_io = np.minimum(p["idle_cpu"] / np.maximum(p["burst_cpu"], 1e-9), 1.0)
    io = np.where(on, 1.0, idle_io)
    return _demand(
        np.clip(level, 0.0, 1.0) * vcpus,
        np.clip(p["mem"], 0.0, 1.0) * mem,
        p["net_mbps"] * io,
        p["storage_mbs"] * io,
    )


def _diurnal(p: Columns, seed: U64, t: F64, vcpus: F64, mem: F64) -> DemandArrays:
    shift = p["spread_s"] * (2.0 * uniform(seed, 0, np.zeros(1)) - 1.0)
    wave = np.cos(2.0 * np.pi * (t - p["peak_s"] - shift) / p["day_s"])
    wobble = p["noise"] * (2.0 * uniform(seed, 1, np.floor(t / NOISE_S)) - 1.0)
    level = np.clip(p["mean_cpu"] + p["swing"] * wave + wobble, 0.0, 1.0)
    io = level / np.maximum(np.minimum(p["mean_cpu"] + p["swing"], 1.0), 1e-9)
    return _demand(
        level * vcpus,
        np.clip(p["mem"], 0.0, 1.0) * mem,
        p["net_mbps"] * io,
        p["storage_mbs"] * io,
    )


def _hadoop(p: Columns, seed: U64, t: F64, _vcpus: F64, mem: F64) -> DemandArrays:
    index, into = _epoch(seed, t, p["task_s"])
    busy = p["busy_min"] + (1.0 - p["busy_min"]) * uniform(seed, 1, index)
    running = p["slots"] * busy
    io = running * np.where(into >= 1.0 - p["shuffle_share"], 1.0, HADOOP_QUIET_IO)
    return _demand(
        running * p["cpu_per_slot"],
        np.clip(p["mem"] * (0.5 + 0.5 * busy), 0.0, 1.0) * mem,
        p["shuffle_net_mbps"] * io,
        p["shuffle_storage_mbs"] * io,
    )


def _noisy(p: Columns, seed: U64, t: F64, vcpus: F64, mem: F64) -> DemandArrays:
    k = 1.0 - p["jitter"] * uniform(seed, 1, np.floor(t / NOISE_S))
    return _demand(
        np.clip(p["cpu"], 0.0, 1.0) * vcpus,
        np.clip(p["mem"], 0.0, 1.0) * mem,
        p["net_mbps"] * k,
        p["storage_mbs"] * k,
    )


KERNELS: Mapping[type[Workload], Kernel] = {
    Steady: _steady,
    Bursty: _bursty,
    Diurnal: _diurnal,
    HadoopWorker: _hadoop,
    NoisyNeighbour: _noisy,
}
