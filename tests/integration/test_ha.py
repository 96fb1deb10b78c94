"""HA with real processes on each broker: a hosts process killed with SIGKILL, or a host
crashed by command, is declared failed from its silence and its VMs run elsewhere within
30 s with the default settings; a host that comes back never runs them again."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.host import CrashHost
from schemas.pool import Owner
from schemas.queries import HostList, ListHosts, ListVms, VmList
from schemas.scheduling import PlaceVm
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]

WITHIN = 30.0  # seconds from the failure to its VMs running elsewhere, default settings


async def running(client: Client) -> dict[str, list[str]]:
    """Each VM's hosts by the hosts processes' answers (a VM on two hosts would show twice)."""
    reply = await client.query(ListVms(), timeout=5)
    assert isinstance(reply, VmList)
    out: dict[str, list[str]] = {}
    for v in reply.vms:
        if v.state == "on":
            out.setdefault(v.vm, []).append(v.host)
    return out


async def restarted(client: Client, vms: list[str], failed: str, after: float) -> float:
    """Wait until every one of ``vms`` was VmRestarted off ``failed``; seconds from ``after``."""
    await poll(
        lambda: _restarted_off(client, failed),
        lambda done: set(vms) <= done,
        timeout=WITHIN + 15,
        what=f"{vms} restarted off {failed}",
    )
    return time.monotonic() - after


async def _restarted_off(client: Client, failed: str) -> set[str]:
    return {
        env.data.vm  # type: ignore[attr-defined]
        for env in await events_of(client, "VmRestarted")
        if env.data.from_host.startswith(failed)  # type: ignore[attr-defined]
    }


async def events_of(client: Client, kind: str) -> list[Envelope[Message]]:
    return [
        e.envelope
        async for e in client.bus.replay()
        if e.envelope is not None and e.envelope.type == kind
    ]


async def test_a_killed_hosts_process_and_a_crashed_host_lose_no_vm(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    base = {"VPLANE_BUS_URL": bus_url, "VPLANE_NAMESPACE": client.bus.namespace}
    hosts_a = {**base, "VPLANE_HOSTS": "2", "VPLANE_HOST_PREFIX": "a"}
    hosts_b = {**base, "VPLANE_HOSTS": "2", "VPLANE_HOST_PREFIX": "b"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs += await start_ready(client, [("hosts", hosts_a), ("hosts", hosts_b)], tmp_path)
        procs += await start_ready(
            client,
            [
                ("scheduler", {**base, "VPLANE_PRIORITY": "high"}),
                ("scheduler", {**base, "VPLANE_PRIORITY": "low"}),
            ],
            tmp_path,
        )
        for i in range(8):
            priority = Owner.HIGH if i % 2 == 0 else Owner.LOW
            await client.send(PlaceVm(vm=f"vm{i}", priority=priority, cpu=1, mem_mib=2048))
        placed = await poll(
            lambda: running(client), lambda r: len(r) == 8, timeout=30, what="8 VMs running"
        )
        on_a = sorted(vm for vm, where in placed.items() if where[0].startswith("a"))
        assert on_a, placed

        # SIGKILL: the process says nothing; its hosts just fall silent.
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        took = await restarted(client, on_a, "a", time.monotonic())
        assert took < WITHIN, f"{took:.1f} s"
        after_kill = await running(client)
        assert all(after_kill[vm] == [after_kill[vm][0]] for vm in after_kill), after_kill
        assert all(after_kill[vm][0].startswith("b") for vm in on_a), after_kill
        hosts = await client.query(ListHosts(), timeout=5)
        assert isinstance(hosts, HostList)
        assert {h.host: str(h.state) for h in hosts.hosts} == {
            "a1": "failed",
            "a2": "failed",
            "b1": "up",
            "b2": "up",
        }

        # It comes back: its hosts return, and run none of the VMs restarted elsewhere.
        procs[0] = (await start_ready(client, [("hosts", hosts_a)], tmp_path))[0]
        await poll(
            lambda: events_of(client, "HostReturned"),
            lambda es: len(es) == 2,
            timeout=30,
            what="a1 and a2 returned",
        )
        back = await running(client)
        assert sorted(back) == sorted(placed)
        assert all(len(where) == 1 for where in back.values()), back
        assert all(back[vm][0].startswith("b") for vm in on_a), back

        # A host crashed by command goes the same way.
        crashed = back[on_a[0]][0]
        on_crashed = sorted(vm for vm, where in back.items() if where[0] == crashed)
        await client.send(CrashHost(host=crashed))
        took = await restarted(client, on_crashed, crashed, time.monotonic())
        assert took < WITHIN, f"{took:.1f} s"
        final = await running(client)
        assert sorted(final) == sorted(placed)
        assert all(len(w) == 1 and w[0] != crashed for w in final.values()), final
    finally:
        codes = await stop_all(procs)
    assert codes[1:] == [0] * (len(codes) - 1), codes
