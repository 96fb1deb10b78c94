"""Several hosts processes on one bus, as `docker compose --scale hosts=N` runs them."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest

from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, PowerOffVm
from shared.bus.nats import NatsBus
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
