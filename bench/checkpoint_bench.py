"""VM checkpoints of the emulated hosts: stun time, checkpoint time and the save's write rate,
next to a raw numpy write + fsync of the same bytes to the same datastore.

For each size of ``--sizes`` (MiB): one host (in-process ``Machine`` and ``Fleet``, as the
hosts service folds and decides) with one full-memory VM (1 GiB disk, seed ``--seed``),
ticked a few times so its memory is written, then ``--checkpoints`` checkpoints in a row.
Each: ``CheckpointVm`` decided, its ``CheckpointStarted`` folded (the stop; the event's
``stun_ms`` times it), then a guest tick (the guest keeps writing) and a save step in turn
until the ``CheckpointCompleted``, which is folded. The guest memory's checksum taken right
after the stop must equal the file's ``memory_checksum``; each file is read back too.

raw: the same number of bytes (random, made before timing) written to a file in the same
datastore directory with ``os.write`` in chunks of one save step (``SAVE_STEP_PAGES``
pages), one ``fsync``; ``--raw-runs`` runs spread among the checkpoints, median reported.

    .venv/bin/python bench/checkpoint_bench.py [--sizes 256,1024] [--checkpoints 20]
        [--datastore DIR] [--seed N] [--raw-runs N] [--profile] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import pstats
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash
from _common import signals_held, terminate

from schemas import Command, Envelope, Event
from schemas.checkpoints import (
    CheckpointCompleted,
    CheckpointStarted,
    CheckpointVm,
)
from schemas.host import HostRegistered
from schemas.pool import MHZ_PER_VCPU, CapacityReserved, Owner
from schemas.vm import CreateVm, MemoryMode, VmCreated
from services.hosts.checkpoint_files import (
    DEVICE_BYTES,
    HEADER_BYTES,
    READ_CHUNK,
    checkpoint_bytes,
    checkpoint_path,
)
from services.hosts.checkpoint_jobs import SAVE_STEP_PAGES
from services.hosts.disks import GIB, Disks
from services.hosts.domain import decide
from services.hosts.machine import Machine
from services.hosts.memory.geometry import PAGE_SIZE
from services.hosts.state import Fleet, evolve
from shared.logs import configure as configure_logs

HOST = "h1"
VM = "vm"
PRODUCER = "checkpoint-bench"
VM_CPU = 2
# Guest ticks before the first checkpoint (its memory written), and between two.
WARM_TICKS = 3
GAP_TICKS = 2
# Checkpoint files kept on the datastore; older ones are unlinked by the benchmark.
KEEP_FILES = 2
# Room left free on the datastore's filesystem beyond the files (disks, the raw file).
SPARE_BYTES = 2 * GIB
STEP_LIMIT = 10_000
TARGET_STUN_RATIO = 1.5
TARGET_WRITE_RATIO = 0.5
MB = 1e6


class Rig:
    """One host of a hosts process, driven in-process: events folded into the fleet and the
    machine, commands decided on the machine's facts, guests ticked."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.fleet = Fleet()
        self.machine = Machine([HOST], Disks(root, capacity))
        self.ticks = 0

    def fold(self, event: Event) -> None:
        before = self.fleet
        self.fleet = evolve(before, event)
        self.machine.apply(before, event)

    def decide(self, cmd: Command) -> list[Event]:
        env = Envelope.wrap(cmd, producer=PRODUCER)
        return decide(self.fleet, env, self.machine.facts(self.fleet))

    def tick(self) -> float:
        """One guest tick; its wall time."""
        start = time.perf_counter()
        self.ticks += 1
        self.machine.tick(self.fleet, self.ticks, sim_time=float(self.ticks), tick_s=1.0)
        return time.perf_counter() - start


def host_with_vm(root: Path, capacity: int, mem_mib: int, seed: int) -> Rig:
    """A host with room for one full-memory VM of ``mem_mib``, created as a scheduler would
    have it: its reservation first (as ``tests/reserving.covering`` builds it), then
    ``CreateVm``."""
    rig = Rig(root, capacity)
    host_mib = max(2 * mem_mib, mem_mib + 1024)
    rig.fold(HostRegistered(host=HOST, cpu_cores=8, cpu_mhz=2000, mem_mib=host_mib))
    rig.fold(
        CapacityReserved(
            host=HOST,
            reservation=VM,
            workload=VM,
            owner=Owner.LOW,
            purpose="vm",
            cpu_mhz=VM_CPU * MHZ_PER_VCPU,
            mem_mib=mem_mib,
        )
    )
    cmd = CreateVm(
        vm=VM,
        cpu=VM_CPU,
        mem_mib=mem_mib,
        host=HOST,
        memory_mode=MemoryMode.FULL,
        disk_gib=1,
        seed=seed,
    )
    events = rig.decide(cmd)
    if not isinstance(events[0], VmCreated):
        raise SystemExit(f"CreateVm of {mem_mib} MiB was not taken: {events[0]!r}")
    for event in events:
        rig.fold(event)
    for _ in range(WARM_TICKS):
        rig.tick()
    return rig


@dataclass
class Sample:
    """One checkpoint."""

    stun_ms: float
    # Folding CheckpointStarted (the child disk, the file opened, the stop), wall ms.
    stop_fold_ms: float
    # Decide to the completion folded, without the benchmark's own checksum.
    total_s: float
    save_s: float
    # Guest ticks run between the save's steps, and the checksum at the stop (the
    # benchmark's; both inside the event's save_seconds).
    ticks_s: float
    checksum_s: float
    steps: int
    bytes: int
    copied_aside: int
    memory_matches: bool
    file_matches: bool

    @property
    def write_mb_s(self) -> float:
        return self.bytes / self.save_s / MB

    @property
    def own_s(self) -> float:
        """The save's own work: the ticks and the checksum taken out."""
        return self.save_s - self.ticks_s - self.checksum_s


def checkpoint(rig: Rig, name: str, profile: cProfile.Profile | None) -> tuple[Sample, Path]:
    machine = rig.machine
    start = time.perf_counter()
    [started] = rig.decide(CheckpointVm(vm=VM, host=HOST, checkpoint=name))
    if not isinstance(started, CheckpointStarted):
        raise SystemExit(f"checkpoint {name} was refused: {started!r}")
    folding = time.perf_counter()
    rig.fold(started)
    stop_fold = time.perf_counter() - folding
    # The guest has not run since the stop: its memory is what the file must hold.
    summing = time.perf_counter()
    at_stop = machine.memory[HOST].checksum(VM)
    checksum_s = time.perf_counter() - summing
    ticks_s = 0.0
    steps = 0
    while True:
        if steps == STEP_LIMIT:
            raise SystemExit(f"checkpoint {name} did not end in {STEP_LIMIT} steps")
        steps += 1
        ticks_s += rig.tick()
        if profile is not None:
            profile.enable()
        ended = machine.checkpoints.step(rig.fleet)
        if profile is not None:
            profile.disable()
        if ended:
            break
    [done] = ended
    if not isinstance(done, CheckpointCompleted):
        raise SystemExit(f"checkpoint {name} failed: {done!r}")
    rig.fold(done)
    total = time.perf_counter() - start - checksum_s
    path = checkpoint_path(machine.disks.datastore(), name)
    sample = Sample(
        stun_ms=done.stun_ms,
        stop_fold_ms=stop_fold * 1000,
        total_s=total,
        save_s=done.save_seconds,
        ticks_s=ticks_s,
        checksum_s=checksum_s,
        steps=steps,
        bytes=done.bytes,
        copied_aside=done.pages_copied_aside,
        memory_matches=done.memory_checksum == at_stop,
        file_matches=read_back(path) == (done.checksum, done.memory_checksum),
    )
    return sample, path


def read_back(path: Path) -> tuple[str, str]:
    """The file's xxh3_128, whole and of its pages alone, as read from the datastore."""
    whole, memory = xxhash.xxh3_128(), xxhash.xxh3_128()
    with path.open("rb") as f:
        whole.update(f.read(HEADER_BYTES + DEVICE_BYTES))
        while chunk := f.read(READ_CHUNK):
            whole.update(chunk)
            memory.update(chunk)
    return whole.hexdigest(), memory.hexdigest()


def raw_write(folder: Path, data: npt.NDArray[np.uint8]) -> float:
    """``data`` to a new file in ``folder``, one save step's bytes per ``os.write``, then
    one fsync; the wall time from the open to the close."""
    path = folder / "raw.bin"
    chunk = SAVE_STEP_PAGES * PAGE_SIZE
    view = memoryview(data.reshape(-1).data)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for first in range(0, len(view), chunk):
            part = view[first : first + chunk]
            while part:
                part = part[os.write(fd, part) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def measure_size(
    root: Path, mem_mib: int, opts: argparse.Namespace, profile: cProfile.Profile | None
) -> dict[str, Any]:
    root.mkdir()
    capacity = shutil.disk_usage(root).free
    built = time.perf_counter()
    rig = host_with_vm(root, capacity, mem_mib, opts.seed)
    build_s = time.perf_counter() - built
    folder = rig.machine.disks.datastore().checkpoints
    size = checkpoint_bytes(mem_mib)
    rng = np.random.default_rng([opts.seed, mem_mib])
    data = np.frombuffer(rng.bytes(size), np.uint8)
    # The raw runs are spread among the checkpoints, so both meet the same machine.
    raw_after = {(i + 1) * opts.checkpoints // opts.raw_runs - 1 for i in range(opts.raw_runs)}
    samples: list[Sample] = []
    raw_s: list[float] = []
    kept: list[Path] = []
    for n in range(opts.checkpoints):
        sample, path = checkpoint(rig, f"c{n + 1}", profile)
        samples.append(sample)
        kept.append(path)
        while len(kept) > KEEP_FILES:
            kept.pop(0).unlink()
        print(
            f"  {mem_mib} MiB c{n + 1}: stun {sample.stun_ms:.3f} ms, total "
            f"{sample.total_s * 1000:.0f} ms, save {sample.save_s:.3f} s, "
            f"{sample.write_mb_s:.0f} MB/s, {sample.copied_aside} pages aside",
            file=sys.stderr,
        )
        if n in raw_after:
            raw_s.append(raw_write(folder, data))
            print(f"  {mem_mib} MiB raw: {size / raw_s[-1] / MB:.0f} MB/s", file=sys.stderr)
        for _ in range(GAP_TICKS):
            rig.tick()
    # The rate of the p50 save (a p50 of rates would not match the save seconds printed).
    vp_rate = size / pct([s.save_s for s in samples], 50) / MB
    raw_rate = size / statistics.median(raw_s) / MB
    return {
        "mem_mib": mem_mib,
        "file_bytes": size,
        "checkpoints": len(samples),
        "build_seconds": build_s,
        "stun_ms": spread([s.stun_ms for s in samples]),
        "stop_fold_ms": spread([s.stop_fold_ms for s in samples]),
        "total_ms": spread([s.total_s * 1000 for s in samples]),
        "save_seconds_p50": pct([s.save_s for s in samples], 50),
        "ticks_in_save_ms_p50": pct([s.ticks_s * 1000 for s in samples], 50),
        "checksum_at_stop_ms_p50": pct([s.checksum_s * 1000 for s in samples], 50),
        "steps": samples[0].steps,
        "pages_copied_aside_p50": pct([s.copied_aside for s in samples], 50),
        "write_mb_s_p50": vp_rate,
        "own_mb_s_p50": size / pct([s.own_s for s in samples], 50) / MB,
        "raw_mb_s_median": raw_rate,
        "raw_runs": len(raw_s),
        "raw_mb_s": [size / s / MB for s in raw_s],
        "write_ratio": vp_rate / raw_rate,
        "memory_checksums_match": sum(s.memory_matches for s in samples),
        "files_read_back_match": sum(s.file_matches for s in samples),
        "samples": [asdict(s) for s in samples],
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values)}


def run(root: Path, opts: argparse.Namespace) -> dict[str, Any]:
    profile = cProfile.Profile() if opts.profile else None
    per_size = [measure_size(root / f"{mib}mib", mib, opts, profile) for mib in opts.sizes]
    if profile is not None:
        print("cProfile of the save steps (machine.checkpoints.step):", file=sys.stderr)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    small, large = per_size[0], per_size[-1]
    count = sum(r["checkpoints"] for r in per_size)
    result: dict[str, Any] = {
        "sizes_mib": opts.sizes,
        "checkpoints_per_size": opts.checkpoints,
        "save_step_pages": SAVE_STEP_PAGES,
        "seed": opts.seed,
        "sizes": {str(r["mem_mib"]): r for r in per_size},
        "stun_ratio": {
            "of": f"{large['mem_mib']} MiB / {small['mem_mib']} MiB",
            "p50": large["stun_ms"]["p50"] / small["stun_ms"]["p50"],
            "p99": large["stun_ms"]["p99"] / small["stun_ms"]["p99"],
            "target": TARGET_STUN_RATIO,
        },
        "write_ratio": {
            "by_size": {str(r["mem_mib"]): r["write_ratio"] for r in per_size},
            "target": TARGET_WRITE_RATIO,
        },
        "checksums": {
            "count": count,
            "memory_match": sum(r["memory_checksums_match"] for r in per_size),
            "files_match": sum(r["files_read_back_match"] for r in per_size),
        },
    }
    stun = result["stun_ratio"]
    result["stun_ratio"]["met"] = max(stun["p50"], stun["p99"]) <= TARGET_STUN_RATIO
    result["write_ratio"]["met"] = all(r["write_ratio"] >= TARGET_WRITE_RATIO for r in per_size)
    return result


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def report(result: dict[str, Any], where: str, free_gib: float) -> None:
    sizes = list(result["sizes"].values())
    step_mib = SAVE_STEP_PAGES * PAGE_SIZE // 2**20
    print(
        f"== VM checkpoints: {result['checkpoints_per_size']} in a row per size, the guest "
        f"writing during the save (a guest tick before each save step of {step_mib} MiB)"
    )
    print(
        f"datastore {where} (removed; {free_gib:.0f} GiB free); raw: random numpy bytes, "
        f"os.write in {step_mib} MiB chunks + one fsync, {sizes[0]['raw_runs']} runs among "
        "the checkpoints"
    )
    print()
    print(f"  {'':40}" + "".join(f"{r['mem_mib']:>8} MiB" for r in sizes))

    def row(label: str, key: Any, fmt: str) -> None:
        print(f"  {label:40}" + "".join(f"{format(key(r), fmt):>12}" for r in sizes))

    row("stun p50 ms (CheckpointCompleted.stun_ms)", lambda r: r["stun_ms"]["p50"], ".3f")
    row("stun p99 ms", lambda r: r["stun_ms"]["p99"], ".3f")
    row("stun max ms", lambda r: r["stun_ms"]["max"], ".3f")
    row("CheckpointStarted folded p50 ms", lambda r: r["stop_fold_ms"]["p50"], ".2f")
    row("total checkpoint p50 ms", lambda r: r["total_ms"]["p50"], ".0f")
    row("total checkpoint p99 ms", lambda r: r["total_ms"]["p99"], ".0f")
    row("save seconds p50", lambda r: r["save_seconds_p50"], ".3f")
    row("  of which guest ticks p50 ms", lambda r: r["ticks_in_save_ms_p50"], ".0f")
    row("  of which checksum at the stop p50 ms", lambda r: r["checksum_at_stop_ms_p50"], ".0f")
    row("save steps", lambda r: r["steps"], "d")
    row("pages copied aside p50", lambda r: r["pages_copied_aside_p50"], ".0f")
    row("write rate p50 MB/s (vplane)", lambda r: r["write_mb_s_p50"], ".0f")
    row("  without the ticks and checksum p50", lambda r: r["own_mb_s_p50"], ".0f")
    row("write rate median MB/s (raw)", lambda r: r["raw_mb_s_median"], ".0f")
    row("ratio vplane / raw", lambda r: r["write_ratio"], ".3f")
    print()
    stun, write, sums = result["stun_ratio"], result["write_ratio"], result["checksums"]
    print(
        f"  stun ratio {stun['of']}: p50 {stun['p50']:.3f}, p99 {stun['p99']:.3f} "
        f"(target <= {stun['target']}): {met(stun['met'])}"
    )
    ratios = ", ".join(f"{mib} MiB {ratio:.3f}" for mib, ratio in write["by_size"].items())
    print(f"  write rate ratio: {ratios} (target >= {write['target']}): {met(write['met'])}")
    print(
        f"  checksums: {sums['memory_match']} of {sums['count']} match "
        "(guest memory right after the stop = the file's memory_checksum)"
    )
    print(
        f"  files read back: {sums['files_match']} of {sums['count']} as their event says "
        "(whole file and memory part)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[256, 1024],
        help="VM memory sizes in MiB, comma-separated (default 256,1024)",
    )
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints per size")
    parser.add_argument(
        "--datastore",
        type=Path,
        default=None,
        help="a directory to make the datastore in (default: the system's temporary dir)",
    )
    parser.add_argument("--seed", type=int, default=5, help="the VM's seed and the raw bytes'")
    parser.add_argument("--raw-runs", type=int, default=5, help="raw write runs per size")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile of the save steps, to stderr"
    )
    parser.add_argument("--json", dest="as_json", action="store_true", help="print JSON too")
    opts = parser.parse_args(argv)
    if not opts.sizes or min(opts.sizes) < 16 or opts.checkpoints < 1 or opts.seed < 0:
        parser.error("--sizes must be >= 16 MiB each, --checkpoints >= 1, --seed >= 0")
    if not 1 <= opts.raw_runs <= opts.checkpoints:
        parser.error("--raw-runs must be between 1 and --checkpoints")
    opts.sizes = sorted(set(opts.sizes))
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logs(level="warning")
    # A plain kill unwinds like Ctrl-C does, so the datastore goes away.
    signal.signal(signal.SIGTERM, terminate)
    started = time.perf_counter()
    parent = opts.datastore or Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    need = (KEEP_FILES + 2) * checkpoint_bytes(max(opts.sizes)) + SPARE_BYTES
    if free < need:
        raise SystemExit(
            f"{parent} has {free / GIB:.1f} GiB free; the run needs {need / GIB:.1f} GiB "
            f"({KEEP_FILES} checkpoint files kept, one being written, the raw file)"
        )
    root = Path(tempfile.mkdtemp(prefix="vplane-checkpoint-bench-", dir=parent))
    try:
        result = run(root, opts)
    finally:
        with signals_held():
            shutil.rmtree(root, ignore_errors=True)
    result["elapsed_seconds"] = time.perf_counter() - started
    report(result, str(root), free / GIB)
    print(f"\nelapsed {result['elapsed_seconds']:.1f} s")
    if opts.as_json:
        print(json.dumps(result, indent=2))
    sums = result["checksums"]
    return 0 if sums["memory_match"] == sums["files_match"] == sums["count"] else 1


if __name__ == "__main__":
    sys.exit(main())
