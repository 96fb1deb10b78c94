"""A service killed with SIGKILL comes back from the log and misses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.queries import ListVms, VmList
from schemas.vm import CreateVm, PowerOffVm
from shared.bus import Bus, RequestFailed
from shared.bus.nats import NatsBus
from shared.bus.rabbit import RabbitBus
from shared.client import Client
from shared.testing import poll
from tests.integration.stack import start_ready
from tests.reserving import create, reservation, reserve

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def started(client: Client, env: dict[str, str], log_dir: Path) -> subprocess.Popen[bytes]:
    """Start the hosts service and wait until it is ready."""
    [proc] = await start_ready(client, [("hosts", env)], log_dir)
    return proc


async def vm_states(client: Client) -> dict[str, str]:
    try:
        reply = await client.query(ListVms(), timeout=1)
    except RequestFailed:
        return {}
    assert isinstance(reply, VmList)
    return {v.vm: str(v.state) for v in reply.vms}


async def log_types(client: Client) -> list[tuple[str, str]]:
    out = []
    async for entry in client.bus.replay():
        env: Envelope[Message] | None = entry.envelope
        assert env is not None
        out.append((env.type, env.subject))
    return out


async def test_killed_hosts_service_rebuilds_and_handles_what_came_meanwhile(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """SIGKILL the hosts service; commands sent while it is down are handled exactly once
    when it restarts, and the state it had before is rebuilt from the log."""
    env = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.2",
    }
    first = await started(client, env, tmp_path)
    try:
        host = "h1"
        answer = await create(
            client, CreateVm(vm="before", cpu=1, mem_mib=512, host=host), timeout=30
        )
        assert answer.type == "VmCreated", answer.data
        assert answer.data.host == host  # type: ignore[attr-defined]
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)

    # While it is down: two commands wait in the work queue (the one that creates a VM
    # behind the room reserved for it, which the restarted service folds first).
    during = CreateVm(vm="during", cpu=1, mem_mib=512, host="h2")
    await reserve(client.bus, reservation(during.vm, "h2", during.cpu, during.mem_mib))
    await client.send(during)
    await client.send(PowerOffVm(vm="before", host=host))
    await asyncio.sleep(0.5)
    assert not [t for t in await log_types(client) if t[1] == "vm/during"]

    second = await started(client, env, tmp_path)
    try:
        states = await poll(
            lambda: vm_states(client),
            lambda s: s == {"before": "off", "during": "on"},
            timeout=30,
            what="both commands handled after the restart",
        )
        assert states == {"before": "off", "during": "on"}
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        if second.poll() is None:
            second.kill()

    entries = await log_types(client)
    vm_events = [t for t in entries if t[1].startswith("vm/")]
    assert vm_events == [
        ("VmCreated", "vm/before"),
        ("VmCreated", "vm/during"),
        ("VmPoweredOff", "vm/before"),
    ]
    # Hosts registered once, though the service started twice.
    assert [t for t in entries if t[0] == "HostRegistered"] == [
        ("HostRegistered", "host/h1"),
        ("HostRegistered", "host/h2"),
    ]
    starts = [t for t in entries if t[0] == "ServiceStarted"]
    assert len(starts) == 2
    assert [t for t in entries if t[0] == "ServiceStopped"] == [("ServiceStopped", "service/hosts")]


async def test_service_exits_cleanly_on_sigterm_without_losing_acks(
    client: Client, bus_url: str, tmp_path: Path
) -> None:
    """After a SIGTERM drain, a restarted service gets no command redelivered: every
    command it handled was acknowledged before it exited."""
    env = {
        "VPLANE_BUS_URL": bus_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "1",
    }
    proc = await started(client, env, tmp_path)
    try:
        vms = [CreateVm(vm=f"vm{i}", cpu=1, mem_mib=64, host="h1") for i in range(20)]
        await reserve(client.bus, *(reservation(c.vm, "h1", c.cpu, c.mem_mib) for c in vms))
        for cmd in vms:
            await client.send(cmd)
        await poll(lambda: vm_states(client), lambda s: len(s) == 20, timeout=30, what="20 VMs")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    # Nothing left in the work queue for this consumer, acknowledged or not.
    assert await commands_left(client.bus, "hosts-commands") == 0
    assert await commands_left(client.bus, "hosts-h") == 0


async def commands_left(bus: Bus, consumer: str) -> int:
    if isinstance(bus, NatsBus):
        info = await bus.nc.jsm().consumer_info(f"{bus.namespace.upper()}_COMMANDS", consumer)
        assert info.num_redelivered == 0
        return int(info.num_pending + info.num_ack_pending)
    assert isinstance(bus, RabbitBus)
    channel = await bus.conn.channel()
    try:
        queue = await channel.declare_queue(bus.topology.consumer_queue(consumer), passive=True)
        return int(queue.declaration_result.message_count or 0)
    finally:
        await channel.close()
