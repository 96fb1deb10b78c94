"""Several hosts processes on one bus, as `docker compose --scale hosts=N` runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.vm import CreateVm, PowerOffVm
from shared.bus.nats import NatsBus
from shared.client import Client
from shared.testing import unique_namespace
from tests.integration.stack import start_ready, stop_all

pytestmark = [pytest.mark.broker, pytest.mark.integration]


async def test_commands_reach_the_process_that_owns_their_host(
    nats_url: str, tmp_path: Path
) -> None:
    """Two processes with their own host prefixes each get the commands for their hosts;
    a VM that names no host is placed by one of them."""
    bus = NatsBus(nats_url, unique_namespace())
    await bus.start()
    client = Client(bus, producer="test")
    base = {"VPLANE_BUS_URL": nats_url, "VPLANE_NAMESPACE": bus.namespace, "VPLANE_HOSTS": "1"}
    procs = await start_ready(
        client, [("hosts", {**base, "VPLANE_HOST_PREFIX": p}) for p in ("a", "b")], tmp_path
    )
    try:
        for host in ("b1", "a1"):
            [created] = await client.send_and_wait(
                CreateVm(vm=f"on-{host}", cpu=1, mem_mib=64, host=host), timeout=30
            )
            assert created.type == "VmCreated"
            assert created.producer == "hosts"
            assert created.data.host == host  # type: ignore[attr-defined]
        [off] = await client.send_and_wait(PowerOffVm(vm="on-b1", host="b1"), timeout=30)
        assert off.type == "VmPoweredOff"
        [anywhere] = await client.send_and_wait(CreateVm(vm="any", cpu=1, mem_mib=64), timeout=30)
        assert anywhere.data.host in {"a1", "b1"}  # type: ignore[attr-defined]
    finally:
        await stop_all(procs)
        await bus.close()
