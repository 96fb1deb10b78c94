"""Where the integration tests find their brokers: the environment, the local broker,
or a container (where Docker exists); and how they clean up after themselves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from shared.bus.rabbit import RabbitBus

LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"


def _listening(url: str) -> bool:
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 1),
    ):
        return True
    return False


@contextlib.contextmanager
def rabbitmq_url() -> Iterator[str]:
    """VPLANE_TEST_AMQP_URL, else RabbitMQ on 127.0.0.1:5672, else a testcontainer."""
    url = os.environ.get("VPLANE_TEST_AMQP_URL") or LOCAL_AMQP
    if _listening(url):
        yield url
        return
    if shutil.which("docker") and _docker_engine():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(container.port)
            yield f"amqp://guest:guest@{host}:{port}/"
        return
    pytest.skip(
        f"no RabbitMQ at {url} (start it with `rabbitmq-server -detached`, "
        "or set VPLANE_TEST_AMQP_URL)"
    )


def _docker_engine() -> bool:
    return os.path.exists("/var/run/docker.sock") or bool(os.environ.get("DOCKER_HOST"))


# The queues the services create, by consumer name, for cleaning up after a test.
SERVICE_CONSUMERS = (
    "hosts-commands",
    "hosts-h",
    "hosts-a",
    "hosts-b",
    "scheduler-high-commands",
    "scheduler-low-commands",
    "scheduler-high-telemetry",
    "tenants-commands",
    "tenants-telemetry",
    "contention-monitor-telemetry",
    "migration-coordinator-telemetry",
    "sharing-commands",
    "page-sharing-telemetry",
    "ft-commands",
    "ft-telemetry",
)


async def close_and_delete(bus: RabbitBus) -> None:
    """Close a test's bus, then delete its namespace from a connection of its own:
    queues deleted under a live consumer set it resubscribing while it is being stopped."""
    from shared.bus.rabbit import RabbitBus, delete_namespace

    await bus.close()
    cleaner = RabbitBus(bus.url, bus.namespace)
    await cleaner.start()
    try:
        cleaner.topology.declared |= bus.topology.declared
        await delete_namespace(cleaner)
    finally:
        await cleaner.close()


def drop_rabbitmq_namespace(url: str, namespace: str) -> None:
    """Delete a test namespace's queues and exchanges from RabbitMQ."""
    from shared.bus.rabbit import RabbitBus, delete_namespace

    async def drop() -> None:
        bus = RabbitBus(url, namespace)
        await bus.start()
        try:
            await delete_namespace(bus, SERVICE_CONSUMERS)
        finally:
            await bus.close()

    asyncio.run(drop())


def rabbitmqctl(*args: str) -> str:
    """What the local broker's ``rabbitmqctl`` prints (quiet)."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout
