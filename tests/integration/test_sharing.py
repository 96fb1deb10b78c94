"""The page-sharing daemon and the hosts as processes, on each broker: the daemon asks
the hosts for digests over the broker's request/reply, shares what a brute-force count
finds, goes on after a SIGKILL without sharing a page twice, and a fork made through the
hosts maps its template."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.memory import GetVmMemory, PagesShared, VmMemory
from schemas.sharing import HostSharing, ListSharing, SharingReport, VmTemplated
from schemas.vm import CreateVm, MemoryMode
from shared.bus import RequestFailed
from shared.client import Client
from shared.testing import poll
from tests import reserving
from tests.integration.stack import start_ready, stop_all
from tests.unit.sharing.test_service import _expected

pytestmark = [pytest.mark.broker, pytest.mark.integration]

MIB = 32
GUESTS = (("web1", 1, "linux"), ("web2", 2, "linux"), ("win", 3, "windows"))


def settings(client: Client, bus_url: str) -> dict[str, str]:
    return {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "1",
        "VPLANE_SPEED": "20",
        "VPLANE_TICK_SECONDS": "0.2",
        "VPLANE_SHARING_PAGES_PER_SECOND": "20000",
    }


async def logged(client: Client, *types: str) -> list[Envelope[Message]]:
    return [
        entry.envelope
        async for entry in client.bus.replay()
        if entry.envelope is not None and entry.envelope.type in types
    ]


async def h1(client: Client) -> HostSharing | None:
    """The host's figures, or None while the daemon does not answer (restarting, or its
    broker coming back)."""
    try:
        reply = await client.query(ListSharing())
    except RequestFailed:
        return None
    assert isinstance(reply, SharingReport)
    return next(h for h in reply.hosts if h.host == "h1")


async def create(
    client: Client, vm: str, seed: int, template: str, fork_of: str | None = None
) -> None:
    cmd = CreateVm(
        vm=vm,
        host="h1",
        cpu=1,
        mem_mib=MIB,
        memory_mode=MemoryMode.FULL,
        seed=seed,
        template=template,
        power_on=False,
        fork_of=fork_of,
    )
    created = await reserving.create(client, cmd, timeout=30)
    assert created.type in ("VmCreated", "VmTemplated"), created.data


def saved(figures: HostSharing | None, pages: int) -> bool:
    return figures is not None and figures.pages_sharing == pages


def members(shared: list[Envelope[Message]]) -> list[tuple[str, int]]:
    out = []
    for env in shared:
        assert isinstance(env.data, PagesShared)
        out += [(p.vm_b, p.page_b) for p in env.data.pairs]
    return out


async def test_a_daemon_killed_mid_scan_resumes_and_shares_every_duplicate_once(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """SIGKILL the daemon once it has shared some pages: the next one goes on from the
    log, and in the end the frames saved equal a brute-force count of duplicate pages,
    each shared once; the passes count on from where the killed one stopped."""
    env = settings(client, bus_url)
    [hosts] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        for name, seed, template in GUESTS:
            await create(client, name, seed, template)
        [first] = await start_ready(client, [("sharing", env)], tmp_path)
        await poll(lambda: logged(client, "PagesShared"), bool, timeout=60, what="shared")
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        second = await start_ready(client, [("sharing", env)], tmp_path)
        try:
            expected = _expected(GUESTS)
            done = await poll(
                lambda: h1(client), lambda h: saved(h, expected), timeout=90, what="saved"
            )
        finally:
            assert await stop_all(second) == [0]
    finally:
        assert await stop_all([hosts]) == [0]
    assert done is not None
    assert done.full_scans >= 2
    shared = members(await logged(client, "PagesShared"))
    assert len(shared) == len(set(shared)) == expected
    passes = [e.data.full_scans for e in await logged(client, "SharingPassCompleted")]  # type: ignore[attr-defined]
    assert passes == list(range(1, len(passes) + 1))


async def test_a_fork_maps_its_template_and_survives_a_killed_hosts_process(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """A fork created on the template's host starts with its checksum and every page
    shared; after a SIGKILL of the hosts process, the new one rebuilds both from the log."""
    env = settings(client, bus_url)
    [first] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        await create(client, "gold", 5, "linux")
        await create(client, "child", 5, "linux", fork_of="gold")
        [templated] = [e.data for e in await logged(client, "VmTemplated")]
        assert isinstance(templated, VmTemplated)

        async def memory(vm: str) -> VmMemory:
            reply = await client.query(GetVmMemory(vm=vm))
            assert isinstance(reply, VmMemory)
            return reply

        child = await memory("child")
        assert (child.checksum, child.shared_pages) == (templated.checksum, child.pages)
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
    except BaseException:
        await stop_all([first])
        raise
    [second] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        child = await memory("child")
        assert (child.checksum, child.shared_pages) == (templated.checksum, child.pages)
        assert (await memory("gold")).checksum == templated.checksum
    finally:
        assert await stop_all([second]) == [0]
