"""Choose the bus adapter from a URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from shared.bus.errors import BusError
from shared.bus.protocol import Bus


def bus_from_url(
    url: str, namespace: str = "vplane", *, client_name: str = "vplane", replicas: int = 1
) -> Bus:
    scheme = urlsplit(url).scheme
    if scheme in {"nats", "tls"}:
        from shared.bus.nats import NatsBus

        return NatsBus(url, namespace, client_name=client_name, replicas=replicas)
    if scheme in {"amqp", "amqps"}:
        from shared.bus.rabbit import RabbitBus

        return RabbitBus(url, namespace, client_name=client_name)
    if scheme == "memory":
        from shared.bus.memory import MemoryBus

        return MemoryBus(namespace)
    raise BusError(f"unsupported bus URL {url!r}: use nats://, amqp:// or memory://")
