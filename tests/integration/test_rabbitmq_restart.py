"""RabbitMQ restarting under a running stack: no confirmed event is lost, work goes on."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas import Envelope, Message
from schemas.vm import CreateVm
from shared.bus.rabbit import RabbitBus
from shared.client import Client
from shared.testing import unique_namespace
from tests.brokers import drop_rabbitmq_namespace
from tests.integration.stack import start_ready
from tests.reserving import PRODUCER, create, reservation

pytestmark = [pytest.mark.broker, pytest.mark.integration]


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
async def client(amqp_url: str) -> AsyncIterator[Client]:
    if not amqp_url.startswith("amqp://guest:guest@127.0.0.1:"):
        pytest.skip("restarting RabbitMQ needs the local broker and rabbitmqctl")
    namespace = unique_namespace()
    bus = RabbitBus(amqp_url, namespace)
    await bus.start()
    try:
        yield Client(bus, producer="test")
    finally:
        await bus.close()
        await asyncio.to_thread(drop_rabbitmq_namespace, amqp_url, namespace)


async def test_broker_restart_loses_no_confirmed_event(
    client: Client, amqp_url: str, tmp_path: Path
) -> None:
    """Events confirmed before `rabbitmqctl stop_app` are all in the log after
    `start_app`, and the hosts service answers commands again without a restart (each
    VM created in room reserved for it on its host, as its scheduler would)."""
    env = {
        "VPLANE_BUS_URL": amqp_url,
        "VPLANE_NAMESPACE": client.bus.namespace,
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.5",
    }
    [service] = await start_ready(client, [("hosts", env)], tmp_path)
    try:
        for i in range(20):
            host = f"h{i % 2 + 1}"
            made = await create(
                client, CreateVm(vm=f"before{i}", cpu=1, mem_mib=64, host=host), timeout=30
            )
            assert made.type == "VmCreated", made.data

        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")

        # The service and this client reconnect by themselves; a new command is answered.
        answer = await retry_until_answered(
            client, CreateVm(vm="after", cpu=1, mem_mib=64, host="h1")
        )
        assert answer == "VmCreated"
        assert service.poll() is None, "the hosts service died with the broker restart"

        created = [
            e.envelope.data.vm  # type: ignore[attr-defined]
            async for e in client.bus.replay(filters=("vm.>",))
            if e.envelope is not None and e.envelope.type == "VmCreated"
        ]
        assert created == [f"before{i}" for i in range(20)] + ["after"]
    finally:
        service.terminate()
        service.wait(15)


async def retry_until_answered(client: Client, command: CreateVm) -> str:
    """Reserve room for the command (which names its host), then send it until it is
    answered: right after the restart the connections may still be coming back. The
    reservation is appended until it lands, under one id (the log stores it once). A send
    that did get through before failing would be answered with a rejection (the VM
    exists), which the caller's assertion catches."""
    assert command.host is not None, "a CreateVm names its host"
    held: Envelope[Message] | None = Envelope.wrap(
        reservation(command.vm, command.host, command.cpu, command.mem_mib), producer=PRODUCER
    )
    deadline = asyncio.get_running_loop().time() + 90
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            if held is not None:
                await client.bus.append(held)
                held = None
            [answer] = await client.send_and_wait(command, timeout=10)
        except Exception as err:  # any failure here means "not back yet"
            last = err
            await asyncio.sleep(1)
            continue
        return answer.type
    raise AssertionError(f"no answer after the broker restart: {last!r}")
