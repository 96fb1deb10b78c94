"""The chaos harness: the whole stack as processes, a load of placements, and faults
(SIGKILL of schedulers and of the hosts process, broker faults) while it runs."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import Envelope
from schemas.pool import Owner
from schemas.scheduling import Affinity, PlacementRules, PlaceVm
from shared.bus import BusError
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_service, stop_all

# role -> (module, extra environment); the role is also the name the service connects as.
ROLES: dict[str, tuple[str, dict[str, str]]] = {
    "hosts": ("hosts", {}),
    "scheduler-high": ("scheduler", {"VPLANE_PRIORITY": "high"}),
    "scheduler-low": ("scheduler", {"VPLANE_PRIORITY": "low"}),
    "tenants": ("tenants", {}),
    "contention-monitor": ("contention", {}),
}
# How long a send may keep failing (the broker away) before the test gives up.
SEND_PATIENCE = 60.0


def stack_env(bus_url: str, namespace: str, **extra: str) -> dict[str, str]:
    return {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": namespace,
        "VPLANE_HOSTS": "8",
        "VPLANE_TICK_SECONDS": "0.5",
        "VPLANE_SPEED": "5",
        "VPLANE_ROUND_SECONDS": "0.5",
        "VPLANE_REBALANCE_THRESHOLD": "1",
        **extra,
    }


@dataclass
class Stack:
    """The services by role; a role killed is started again as a new process."""

    client: Client
    env: dict[str, str]
    log_dir: Path
    # The bus URL a process started now is given (a cluster node that is up).
    url: Callable[[], str] | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    dead: list[subprocess.Popen[bytes]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    # Processes that exited before they announced themselves, and were started again.
    failed_starts: list[str] = field(default_factory=list)

    def _env(self, role: str) -> dict[str, str]:
        env = {**self.env, **ROLES[role][1]}
        if self.url is not None:
            env["VPLANE_BUS_URL"] = self.url()
        return env

    async def start(self) -> None:
        """Every service, until each has announced itself (its command queues exist)."""
        self.starts = dict.fromkeys(ROLES, 1)
        self.procs = {
            role: start_service(module, self._env(role), self.log_dir / f"{role}-1.log")
            for role, (module, _) in ROLES.items()
        }
        await wait_all_started(self.client, self)

    def kill(self, role: str) -> None:
        """SIGKILL, as in a crash, then a new process in its place (not waited for)."""
        proc = self.procs[role]
        proc.kill()
        proc.wait(10)
        self._replace(role)

    def _replace(self, role: str) -> None:
        self.dead.append(self.procs[role])
        self.starts[role] += 1
        log = self.log_dir / f"{role}-{self.starts[role]}.log"
        self.procs[role] = start_service(ROLES[role][0], self._env(role), log)

    def supervise(self, announced: set[str]) -> None:
        """Start again, as a supervisor would, a process that exited before announcing
        itself (one whose broker was away while it rebuilt from the log)."""
        pids = {i.rsplit("-", 1)[-1] for i in announced}
        for role, proc in list(self.procs.items()):
            if proc.poll() is not None and str(proc.pid) not in pids:
                self.failed_starts.append(f"{role} (exit {proc.returncode})")
                self._replace(role)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values()]

    def exited(self) -> dict[str, int | None]:
        """The roles whose current process has ended (none should, until stopped)."""
        return {r: p.poll() for r, p in self.procs.items() if p.poll() is not None}

    async def stop(self, *roles: str) -> None:
        await stop_all([self.procs[r] for r in roles or self.procs])


async def send_surely(client: Client, env: Envelope[Any]) -> None:
    """Send until the broker takes it: the same envelope each time, so a send that
    landed before its acknowledgement was lost is stored once (its id is the dedupe id)."""
    deadline = time.monotonic() + SEND_PATIENCE
    while True:
        try:
            await client.bus.send(env)
        except BusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


def placements(count: int, avoid: list[str], seed: int = 7) -> list[Envelope[PlaceVm]]:
    """A mix of high and low priority VMs of 1-2 vCPUs, kept off the hosts in ``avoid``:
    more than the other hosts hold, so some are refused for capacity and they run full."""
    rng = random.Random(seed)
    rules = PlacementRules(host_anti_affinity=Affinity(must=avoid))
    return [
        Envelope.wrap(
            PlaceVm(
                vm=f"load{i}",
                priority=Owner.HIGH if i % 3 == 0 else Owner.LOW,
                cpu=rng.choice((1, 1, 2)),
                mem_mib=rng.choice((256, 512, 1024)),
                rules=rules,
            ),
            producer="chaos",
        )
        for i in range(count)
    ]


async def send_load(client: Client, envs: list[Envelope[PlaceVm]], seconds: float) -> None:
    pause = seconds / max(len(envs), 1)
    for env in envs:
        await send_surely(client, env)
        await asyncio.sleep(pause)


Fault = Callable[[], Awaitable[None]]


async def run_faults(faults: list[tuple[str, Fault]], gap: float, done: list[str]) -> None:
    """Each fault in turn, ``gap`` seconds apart; ``done`` names those carried out."""
    for name, fault in faults:
        await asyncio.sleep(gap)
        started = time.monotonic()
        await fault()
        done.append(f"{name} ({time.monotonic() - started:.1f}s)")


async def started_instances(client: Client) -> set[str] | None:
    """The instances that announced themselves; None when the log cannot be read now."""
    try:
        return {
            e.envelope.data.instance  # type: ignore[attr-defined]
            async for e in client.bus.replay(filters=("service.>",))
            if e.envelope is not None and e.envelope.type == "ServiceStarted"
        }
    except BusError:  # the broker away for a moment: read again
        return None


async def wait_all_started(client: Client, stack: Stack, timeout: float = 60) -> None:
    """Every current process has announced itself (its instance ends with its pid)."""

    def all_in(instances: set[str] | None) -> bool:
        if instances is None:
            return False
        stack.supervise(instances)
        pids = {i.rsplit("-", 1)[-1] for i in instances}
        return all(str(pid) in pids for pid in stack.pids())

    await poll(
        lambda: started_instances(client),
        all_in,
        timeout=timeout,
        what="every restarted service to announce itself",
    )
