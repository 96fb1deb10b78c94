"""The schedulers' placement core: decision throughput at scale, and packing quality.

* Throughput: a pool of ``--hosts`` hosts (three shapes) already holding ``--vms`` VMs,
  then ``--requests`` new requests (a size catalogue; some in spread groups, some with
  should host-affinity, must anti-affinity or a degradable minimum), placed in order
  with reservation after each, once per policy. Each decision (``decide`` + ``commit``)
  is timed alone for p50/p99; ``place_many`` of the same batch gives placements/s with
  its one pool copy included.
* Baseline, same run, same snapshot: a plain numpy greedy loop that knows sizes only
  (no rules, groups, degradation or explanation): first-fit (first host with room in
  every resource) and best-fit (the host left with the least mean free share).
* Quality (needs ``pulp``, not a project dependency): small instances (8-12 equal hosts
  of 12,000 MHz and 40 GiB, 20-30 VMs from the catalogue, ``--quality-seeds`` seeds);
  the binpack policy's hosts used, in arrival order and largest first, against the
  exact optimum from PuLP's CBC (fewest hosts such that CPU and memory fit).

    .venv/bin/python bench/scheduler_bench.py [--hosts N] [--vms N] [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.scheduler.core import (
    Affinity,
    Host,
    PlacedVm,
    Policy,
    Pool,
    Request,
    Resources,
    Rules,
    commit,
    decide,
    place_many,
)

F64 = np.ndarray[Any, np.dtype[np.float64]]
MHZ_PER_VCPU = 1_000.0
# (vCPUs, GiB): the size catalogue for placed VMs and requests alike.
CATALOGUE = ((1, 2), (2, 4), (2, 8), (4, 8), (4, 16), (8, 32))
# (cores, MHz per core, GiB, Mbit/s, MB/s)
# The small instances' hosts: tight for the catalogue, so packing choices matter.
QUALITY_HOST = Resources(12_000.0, 40 * 1_024.0)
SHAPES = (
    (32, 2_400, 256, 25_000, 4_000),
    (48, 2_200, 384, 25_000, 6_000),
    (24, 2_600, 192, 10_000, 2_000),
)


@dataclass(frozen=True)
class Options:
    hosts: int
    vms: int
    requests: int
    seed: int
    quality_seeds: int
    quality_time_limit: float
    as_json: bool


def vm_size(rng: np.random.Generator, *, io: bool = True) -> Resources:
    vcpus, gib = CATALOGUE[int(rng.integers(len(CATALOGUE)))]
    net = float(rng.choice([0.0, 100.0, 500.0])) if io else 0.0
    storage = float(rng.choice([0.0, 20.0, 100.0])) if io else 0.0
    return Resources(vcpus * MHZ_PER_VCPU, gib * 1_024.0, net, storage)


def big_pool(opts: Options) -> Pool:
    rng = np.random.default_rng(opts.seed)
    hosts = []
    for i in range(opts.hosts):
        cores, mhz, gib, net, storage = SHAPES[i % len(SHAPES)]
        hosts.append(Host(f"h{i:05d}", Resources(cores * mhz, gib * 1_024.0, net, storage)))
    vms = [
        PlacedVm(f"vm{j:06d}", hosts[j % opts.hosts].name, vm_size(rng), f"g{j % 1_000}")
        for j in range(opts.vms)
    ]
    return Pool.build(hosts, vms)


def request_mix(opts: Options, pool: Pool) -> list[Request]:
    """30% in a spread group, 10% with a should host-affinity, 5% with a must
    anti-affinity to two placed VMs, 10% degradable to half their size."""
    rng = np.random.default_rng(opts.seed + 1)
    placed = list(pool.vms)
    made = []
    for i in range(opts.requests):
        size = vm_size(rng)
        roll = rng.random()
        group = f"new{i % 500}" if roll < 0.3 else ""
        rules = Rules()
        minimum = None
        if 0.3 <= roll < 0.4:
            prefer = frozenset(pool.names[int(h)] for h in rng.integers(0, len(pool), 2))
            rules = Rules(host_affinity=Affinity(should=prefer))
        elif 0.4 <= roll < 0.45:
            apart = frozenset(placed[int(v)] for v in rng.integers(0, len(placed), 2))
            rules = Rules(vm_anti_affinity=Affinity(must=apart))
        elif 0.45 <= roll < 0.55:
            minimum = Resources(size.cpu_mhz / 2, size.mem_mib / 2)
        made.append(Request(f"new{i:06d}", size, minimum, group, rules))
    return made


def percentile(samples: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(samples), p)) * 1_000.0


def timed_decisions(pool: Pool, requests: Sequence[Request], policy: Policy) -> dict[str, float]:
    work = pool.copy()
    latencies = []
    placed = 0
    clock = time.perf_counter
    start = clock()
    for request in requests:
        began = clock()
        decision = decide(work, request, policy)
        commit(work, request, decision)
        latencies.append(clock() - began)
        placed += decision.placed
    seconds = clock() - start
    batch_start = clock()
    batch = place_many(pool, requests, policy)
    batch_seconds = clock() - batch_start
    assert sum(d.placed for d in batch.decisions) == placed
    return {
        "placements_per_s": len(requests) / seconds,
        "place_many_per_s": len(requests) / batch_seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) * 1_000.0,
        "placed": placed,
    }


def greedy(free: F64, capacity: F64, sizes: F64, best_fit: bool) -> dict[str, float]:
    """Plain numpy: for each size, first host with room (or the tightest), then reserve."""
    free = free.copy()
    inv = np.divide(1.0, capacity, out=np.zeros_like(capacity), where=capacity > 0)
    latencies = []
    placed = 0
    clock = time.perf_counter
    start = clock()
    for k in range(sizes.shape[1]):
        began = clock()
        size = sizes[:, k]
        room = np.all(free >= size[:, None], axis=0)
        if best_fit:
            left = np.where(room, ((free - size[:, None]) * inv).mean(axis=0), np.inf)
            host = int(np.argmin(left))
        else:
            host = int(np.argmax(room))
        if room[host]:
            free[:, host] -= size
            placed += 1
        latencies.append(clock() - began)
    seconds = clock() - start
    return {
        "placements_per_s": sizes.shape[1] / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) * 1_000.0,
        "placed": placed,
    }


def throughput(opts: Options) -> dict[str, Any]:
    built = time.perf_counter()
    pool = big_pool(opts)
    build_s = time.perf_counter() - built
    requests = request_mix(opts, pool)
    sizes = np.stack([r.desired.vector() for r in requests], axis=1)
    # Warm-up: numpy's first calls and the allocator, on a short batch.
    place_many(pool, requests[:200], Policy.BALANCED)
    greedy(pool.free, pool.capacity, sizes[:, :200], best_fit=True)
    core = {policy.value: timed_decisions(pool, requests, policy) for policy in Policy}
    baseline = {
        "first_fit": greedy(pool.free, pool.capacity, sizes, best_fit=False),
        "best_fit": greedy(pool.free, pool.capacity, sizes, best_fit=True),
    }
    return {
        "hosts": opts.hosts,
        "placed_vms": opts.vms,
        "requests": opts.requests,
        "pool_build_s": build_s,
        "core": core,
        "baseline": baseline,
        "ratio_vs_best_fit": {
            p: core[p]["placements_per_s"] / baseline["best_fit"]["placements_per_s"] for p in core
        },
        "ratio_vs_first_fit": {
            p: core[p]["placements_per_s"] / baseline["first_fit"]["placements_per_s"] for p in core
        },
        "target": {"placements_per_s": 1_000.0, "p99_ms": 10.0},
    }


def small_instance(seed: int) -> tuple[list[Host], list[Request]]:
    rng = np.random.default_rng(1_000 + seed)
    count = int(rng.integers(8, 13))
    hosts = [Host(f"h{i:02d}", QUALITY_HOST) for i in range(count)]
    vms = int(rng.integers(20, 31))
    requests = [Request(f"v{j:02d}", vm_size(rng, io=False)) for j in range(vms)]
    return hosts, requests


def optimum(
    pulp: Any, hosts: Sequence[Host], requests: Sequence[Request], limit: float
) -> tuple[int, bool]:
    """Fewest hosts that hold every VM (CPU and memory), and whether CBC proved it."""
    problem = pulp.LpProblem("fewest_hosts", pulp.LpMinimize)
    used = [pulp.LpVariable(f"y{h}", cat="Binary") for h in range(len(hosts))]
    on = [
        [pulp.LpVariable(f"x{v}_{h}", cat="Binary") for h in range(len(hosts))]
        for v in range(len(requests))
    ]
    problem += pulp.lpSum(used)
    for row in on:
        problem += pulp.lpSum(row) == 1
    for h, host in enumerate(hosts):
        for attr in ("cpu_mhz", "mem_mib"):
            need = pulp.lpSum(getattr(r.desired, attr) * on[v][h] for v, r in enumerate(requests))
            problem += need <= getattr(host.capacity, attr) * used[h]
        if h:  # equal hosts: use them in order, which prunes symmetric solutions
            problem += used[h] <= used[h - 1]
    status = problem.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=limit))
    return round(pulp.value(problem.objective)), pulp.LpStatus[status] == "Optimal"


def share(size: Resources) -> tuple[float, float]:
    return size.cpu_mhz / QUALITY_HOST.cpu_mhz, size.mem_mib / QUALITY_HOST.mem_mib


def hosts_used(pool: Pool, requests: Sequence[Request]) -> tuple[int, int]:
    batch = place_many(pool, requests, Policy.BINPACK)
    return int(np.count_nonzero(batch.pool.vms.count)), sum(not d.placed for d in batch.decisions)


def quality(opts: Options) -> dict[str, Any]:
    try:
        pulp = importlib.import_module("pulp")
    except ImportError:
        return {"skipped": "pulp is not installed: .venv/bin/pip install pulp (benchmark only)"}
    if opts.quality_seeds < 1:
        return {"skipped": "--quality-seeds 0"}
    rows = []
    for seed in range(opts.quality_seeds):
        hosts, requests = small_instance(seed)
        pool = Pool.build(hosts)
        by_size = sorted(requests, key=lambda r: -max(share(r.desired)))
        arrival, unplaced = hosts_used(pool, requests)
        largest_first, unplaced_sorted = hosts_used(pool, by_size)
        best, proven = optimum(pulp, hosts, requests, opts.quality_time_limit)
        rows.append(
            {
                "seed": seed,
                "hosts": len(hosts),
                "vms": len(requests),
                "optimum": best,
                "proven_optimal": proven,
                "binpack_arrival": arrival,
                "binpack_largest_first": largest_first,
                "unplaced": unplaced + unplaced_sorted,
                "ratio_arrival": arrival / best,
                "ratio_largest_first": largest_first / best,
            }
        )
    return {
        "instances": rows,
        "mean_ratio_arrival": float(np.mean([r["ratio_arrival"] for r in rows])),
        "mean_ratio_largest_first": float(np.mean([r["ratio_largest_first"] for r in rows])),
    }


def report(tp: dict[str, Any], q: dict[str, Any]) -> None:
    print(
        f"== placement throughput: {tp['hosts']} hosts, {tp['placed_vms']} placed VMs, "
        f"{tp['requests']} requests in order (pool built in {tp['pool_build_s']:.2f} s)"
    )
    print("   30% spread groups, 10% should host-affinity, 5% must anti-affinity, 10% degradable")
    print(
        f"  {'':30s}{'placements/s':>14s}{'p50 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}{'placed':>8s}"
    )

    def line(name: str, f: dict[str, float]) -> None:
        print(
            f"  {name:30s}{f['placements_per_s']:14.0f}{f['p50_ms']:9.3f}"
            f"{f['p99_ms']:9.3f}{f['max_ms']:9.3f}{f['placed']:8.0f}"
        )

    for policy, figures in tp["core"].items():
        line(f"core decide+commit, {policy}", figures)
    for name, figures in tp["baseline"].items():
        line(f"numpy greedy {name.replace('_', '-')}", figures)
    for policy, figures in tp["core"].items():
        print(
            f"  core {policy:9s}: place_many {figures['place_many_per_s']:7.0f}/s; "
            f"ratio to best-fit {tp['ratio_vs_best_fit'][policy]:.2f}, "
            f"to first-fit {tp['ratio_vs_first_fit'][policy]:.2f}"
        )
    print("  target: >= 1000 placements/s, p99 <= 10 ms")

    print("\n== packing quality: binpack's hosts used against PuLP/CBC's optimum (CPU + memory)")
    if "skipped" in q:
        print(f"  skipped: {q['skipped']}")
        return
    head = ("seed", "hosts", "VMs", "optimum", "arrival", "ratio", "largest 1st", "ratio")
    widths = (4, 6, 5, 9, 9, 7, 12, 7)
    print("  " + "".join(f"{h:>{w}s}" for h, w in zip(head, widths, strict=True)))
    for r in q["instances"]:
        cells = (
            r["seed"],
            r["hosts"],
            r["vms"],
            r["optimum"],
            r["binpack_arrival"],
            f"{r['ratio_arrival']:.2f}",
            r["binpack_largest_first"],
            f"{r['ratio_largest_first']:.2f}",
        )
        notes = "" if r["proven_optimal"] else "  (CBC time limit: best found, not proven)"
        notes += f"  unplaced {r['unplaced']}" if r["unplaced"] else ""
        print("  " + "".join(f"{c!s:>{w}s}" for c, w in zip(cells, widths, strict=True)) + notes)
    print(
        f"  mean ratio hosts used / optimum: arrival order {q['mean_ratio_arrival']:.3f}, "
        f"largest first {q['mean_ratio_largest_first']:.3f}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1_000)
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quality-seeds", type=int, default=8)
    parser.add_argument("--quality-time-limit", type=float, default=60.0)
    parser.add_argument("--json", dest="as_json", action="store_true")
    args = parser.parse_args(argv)
    opts = Options(
        args.hosts,
        args.vms,
        args.requests,
        args.seed,
        args.quality_seeds,
        args.quality_time_limit,
        args.as_json,
    )
    tp = throughput(opts)
    q = quality(opts)
    report(tp, q)
    if opts.as_json:
        print(json.dumps({"throughput": tp, "quality": q}, indent=2))


if __name__ == "__main__":
    main()
