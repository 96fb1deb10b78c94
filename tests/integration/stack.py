"""Helpers to run vplane's processes the way a user does: as commands and services."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from schemas.vm import WorkloadKind
from shared.client import Client

VPLANE = (
    str(Path(sys.executable).parent / "vplane")
    if (Path(sys.executable).parent / "vplane").exists()
    else (shutil.which("vplane") or "vplane")
)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the vplane command line and capture what it prints."""
    return subprocess.run(
        [VPLANE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def start_service(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            env={**os.environ, "VPLANE_LOG_FORMAT": "json", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> list[str]:
    """Read a process's stdout until a line contains ``needle``; return the lines read."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return seen
            continue
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not printed within {timeout}s; got:\n{''.join(seen)}")


def drain(proc: subprocess.Popen[str], keep: int = 200) -> deque[str]:
    """Go on reading a process's stdout in a thread, keeping its last lines: `vplane up`
    prints every event when its output is not a terminal, and on a pipe nobody reads it
    would block in that print, deaf to Ctrl-C."""
    assert proc.stdout is not None
    out = proc.stdout
    os.set_blocking(out.fileno(), True)
    lines: deque[str] = deque(maxlen=keep)
    threading.Thread(target=lambda: lines.extend(out), daemon=True).start()
    return lines


async def start_ready(
    client: Client, services: list[tuple[str, dict[str, str]]], log_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """Start services (module, environment) and wait until each has said ServiceStarted:
    only then do their command queues exist on every broker."""
    procs: list[subprocess.Popen[bytes]] = []

    async def launch() -> None:
        for i, (module, env) in enumerate(services):
            procs.append(start_service(module, env, log_dir / f"{module}-{i}.log"))

    await client.wait_for(
        lambda e: e.type == "ServiceStarted", count=len(services), before=launch, timeout=60
    )
    return procs


async def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> list[int]:
    """SIGTERM every process, wait for them (killing those still there ``timeout`` seconds
    later), and return their exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            codes.append(await asyncio.to_thread(proc.wait, max(deadline - time.monotonic(), 0.1)))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(await asyncio.to_thread(proc.wait, 10))
    return codes


def noisy_neighbour(host: str) -> PlaceVm:
    """A 16-vCPU VM with a noisy workload, placed by the low scheduler on ``host`` (the
    tenants' workers' host, in the contention scenarios)."""
    return PlaceVm(
        vm="noisy",
        priority=Owner.LOW,
        cpu=16,
        mem_mib=2048,
        workload=WorkloadKind.NOISY,
        rules=PlacementRules(host_affinity=Affinity(must=[host])),
    )
