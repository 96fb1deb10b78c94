"""Per-page digests of guest memory next to a raw numpy + xxhash pass over the same bytes.

* vplane: ``HostMemory.page_digests(vm)`` on a full-mode VM of ``--pages`` pages (rounded up
  to whole 2 MiB large pages, default content profile, spread over two NUMA nodes).
* raw: the same bytes, in guest order, in one plain contiguous (pages, 4096) uint8 array,
  hashed with ``xxhash.xxh3_64_intdigest`` one page at a time over memoryview slices.

Both are timed in the same run, alternately, best of ``--repeat``; both give the same digests.
The checksum line compares ``HostMemory.checksum(vm)`` (xxh3_128 in guest order) with one
xxh3_128 call over the raw array.

    .venv/bin/python bench/page_digest_bench.py [--pages N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import xxhash

from services.hosts.memory import LARGE_PAGE_PAGES, PAGE_SIZE, HostMemory, VmSpec

Digests = npt.NDArray[np.uint64]


def raw_digests(buffer: npt.NDArray[np.uint8]) -> Digests:
    memory = buffer.reshape(-1).data
    digest = xxhash.xxh3_64_intdigest
    end = len(buffer) * PAGE_SIZE
    return np.fromiter(
        (digest(memory[start : start + PAGE_SIZE]) for start in range(0, end, PAGE_SIZE)),
        np.uint64,
        len(buffer),
    )


def guest_bytes(host: HostMemory, vm: str) -> npt.NDArray[np.uint8]:
    """The VM's memory in guest order, as one contiguous array."""
    out = np.zeros((host.spec(vm).pages, PAGE_SIZE), np.uint8)
    for batch in host.export_pages(vm, batch=4096):
        out[batch.pages[~batch.zero]] = batch.data
    return out


def best_of(repeat: int, *runs: Callable[[], object]) -> list[float]:
    """Best wall time of each run, the runs taking turns so both see the same machine state."""
    best = [float("inf")] * len(runs)
    for _ in range(repeat):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def measure(pages: int, repeat: int) -> dict[str, Any]:
    large_pages = -(-pages // LARGE_PAGE_PAGES)
    host = HostMemory([(large_pages + 1) // 2, large_pages // 2])
    started = time.perf_counter()
    host.create_vm(VmSpec("vm", large_pages, seed=1, template="linux"))
    create_s = time.perf_counter() - started
    pages = large_pages * LARGE_PAGE_PAGES
    buffer = guest_bytes(host, "vm")
    if not np.array_equal(host.page_digests("vm"), raw_digests(buffer)):
        raise SystemExit("page_digests and the raw pass disagree")
    if host.checksum("vm") != xxhash.xxh3_128(buffer.reshape(-1).data).hexdigest():
        raise SystemExit("checksum and the raw xxh3_128 disagree")

    vplane_s, raw_s = best_of(repeat, lambda: host.page_digests("vm"), lambda: raw_digests(buffer))
    checksum_s, raw_checksum_s = best_of(
        repeat,
        lambda: host.checksum("vm"),
        lambda: xxhash.xxh3_128(buffer.reshape(-1).data).hexdigest(),
    )
    mib = pages * PAGE_SIZE / 2**20
    return {
        "pages": pages,
        "mib": mib,
        "repeat": repeat,
        "create_vm_mib_per_s": mib / create_s,
        "page_digests_pages_per_s": pages / vplane_s,
        "raw_digests_pages_per_s": pages / raw_s,
        "digest_ratio": raw_s / vplane_s,
        "checksum_mib_per_s": mib / checksum_s,
        "raw_checksum_mib_per_s": mib / raw_checksum_s,
        "checksum_ratio": raw_checksum_s / checksum_s,
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"guest memory: {result['pages']} pages ({result['mib']:.0f} MiB), best of "
        f"{result['repeat']}"
    )
    print(f"  create_vm (content)   {result['create_vm_mib_per_s']:10.0f} MiB/s")
    print(f"  page_digests          {result['page_digests_pages_per_s']:10.0f} pages/s")
    print(f"  raw numpy + xxhash    {result['raw_digests_pages_per_s']:10.0f} pages/s")
    print(f"  ratio (target >= 0.7) {result['digest_ratio']:10.2f}")
    print(f"  checksum (xxh3_128)   {result['checksum_mib_per_s']:10.0f} MiB/s")
    print(f"  raw xxh3_128          {result['raw_checksum_mib_per_s']:10.0f} MiB/s")
    print(f"  ratio                 {result['checksum_ratio']:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=131_072, help="guest pages (default 512 MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each side")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.pages < 1 or args.repeat < 1:
        parser.error("--pages and --repeat must be >= 1")
    result = measure(args.pages, args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)


if __name__ == "__main__":
    main()
