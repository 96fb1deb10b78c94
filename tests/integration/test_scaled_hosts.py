"""Several hosts processes on one bus, as `docker compose --scale hosts=N` runs them."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest

from schemas import Envelope
from schemas.host import HostRegistered
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, PowerOffVm
from shared.bus import Stream
from shared.bus.nats import NatsBus
from shared.bus.protocol import UNCLAIMED
from shared.client import Client
from shared.testing import poll, unique_namespace
from tests.integration.stack import start_ready, stop_all
from tests.integration.test_restart import commands_left
from tests.reserving import create

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def test_commands_reach_the_process_that_owns_their_host(
    nats_url: str, tmp_path: Path
) -> None:
    """Two processes with their own host prefixes each get the commands for their hosts,
    a VM created in the room reserved for it on its host; a VM that names no host is
    placed by neither (a scheduler places it): it is refused at once, and nothing is
    left in any process's queue."""
    bus = NatsBus(nats_url, unique_namespace())
    await bus.start()
    client = Client(bus, producer="test")
    base = {"VPLANE_BUS_URL": nats_url, "VPLANE_NAMESPACE": bus.namespace, "VPLANE_HOSTS": "1"}
    procs = await start_ready(
        client, [("hosts", {**base, "VPLANE_HOST_PREFIX": p}) for p in ("a", "b")], tmp_path
    )
    try:
        for host in ("b1", "a1"):
            created = await create(
                client, CreateVm(vm=f"on-{host}", cpu=1, mem_mib=64, host=host), timeout=30
            )
            assert created.type == "VmCreated", created.data
            assert created.producer == "hosts"
            assert created.data.host == host  # type: ignore[attr-defined]
        [off] = await client.send_and_wait(PowerOffVm(vm="on-b1", host="b1"), timeout=30)
        assert off.type == "VmPoweredOff"

        began = time.monotonic()
        [anywhere] = await client.send_and_wait(CreateVm(vm="any", cpu=1, mem_mib=64), timeout=30)
        took = time.monotonic() - began
        assert isinstance(anywhere.data, CommandRejected), anywhere.data
        assert anywhere.data.code == RejectionCode.NO_RESERVATION
        assert anywhere.producer == "hosts"
        assert took < 1.0, f"refused after {took:.2f} s"
        vms = [
            e.envelope.data.vm  # type: ignore[attr-defined]
            async for e in bus.replay(filters=("vm.>",))
            if e.envelope is not None and e.envelope.type == "VmCreated"
        ]
        assert vms == ["on-b1", "on-a1"]
        # Acknowledged once answered: a moment after the answer at most.
        for consumer in ("hosts-commands", "hosts-a", "hosts-b"):
            await poll(
                partial(commands_left, bus, consumer),
                lambda left: left == 0,
                timeout=10,
                what=f"nothing left for {consumer}",
            )
    finally:
        await stop_all(procs)
        await bus.close()


async def test_a_command_for_a_host_nobody_runs_is_refused_and_leaves_the_queue(
    nats_url: str, tmp_path: Path
) -> None:
    """Sent straight on the bus (the CLI refuses it before sending), a command for a host
    no process ever registered waits in no consumer's queue: a hosts process refuses it
    unknown-host within a second and takes it off the queue; bytes that are no command
    there are dead-lettered as ``unclaimed``. A command for a host that is registered
    but whose process is away waits for it."""
    bus = NatsBus(nats_url, unique_namespace())
    await bus.start()
    client = Client(bus, producer="test")
    base = {"VPLANE_BUS_URL": nats_url, "VPLANE_NAMESPACE": bus.namespace, "VPLANE_HOSTS": "1"}
    procs = await start_ready(client, [("hosts", {**base, "VPLANE_HOST_PREFIX": "a"})], tmp_path)
    try:
        stray = Envelope.wrap(PowerOffVm(vm="v", host="nohost"), producer="test")
        began = time.monotonic()
        [refused] = await client.wait_for(
            lambda e: e.causation_id == stray.id, timeout=10, before=lambda: bus.send(stray)
        )
        took = time.monotonic() - began
        assert isinstance(refused.data, CommandRejected), refused.data
        assert (refused.data.code, refused.producer) == (RejectionCode.UNKNOWN_HOST, "hosts")
        assert took < 1.0, f"refused after {took:.2f} s"

        await bus.publish_raw(Stream.COMMANDS, "host.ghost.CreateVm", b"{not a command")
        # A host registered in the log whose process is not running: its command waits.
        await bus.append(
            Envelope.wrap(
                HostRegistered(host="gone1", cpu_cores=4, cpu_mhz=2000, mem_mib=4096),
                producer="hosts",
            )
        )
        await bus.send(Envelope.wrap(PowerOffVm(vm="v", host="gone1"), producer="test"))
        dead = await poll(
            lambda: bus.dead_letters(UNCLAIMED),
            lambda found: len(found) == 1,
            timeout=10,
            what="the stray bytes dead-lettered",
        )
        assert dead[0].subject.endswith(".cmd.host.ghost.CreateVm"), dead[0]
        waiting = await poll(
            partial(waiting_for, bus),
            lambda subjects: "host.nohost" not in subjects and "host.ghost" not in subjects,
            timeout=10,
            what="no stray left in the command stream",
        )
        assert waiting == {"host.gone1": 1}
    finally:
        await stop_all(procs)
        await bus.close()


async def waiting_for(bus: NatsBus) -> dict[str, int]:
    """Commands in the command stream, by target (``host.<name>``)."""
    info = await bus.js.stream_info(
        f"{bus.namespace.upper()}_COMMANDS", subjects_filter=f"{bus.namespace}.cmd.host.>"
    )
    out: dict[str, int] = {}
    for subject, count in (info.state.subjects or {}).items():
        target = ".".join(subject.split(".")[2:4])
        out[target] = out.get(target, 0) + count
    return out
