"""The broker-neutral bus: one protocol, an adapter per broker, chosen by URL."""

from shared.bus.errors import (
    BusError,
    BusUnavailable,
    ConcurrencyError,
    PoisonMessage,
    RequestFailed,
)
from shared.bus.protocol import (
    BATCH_LIMIT,
    AppendResult,
    Bus,
    ConsumerSpec,
    DeadLetter,
    Delivery,
    Handler,
    Logged,
    QueryHandler,
    Stream,
    Subscription,
)

__all__ = [
    "BATCH_LIMIT",
    "AppendResult",
    "Bus",
    "BusError",
    "BusUnavailable",
    "ConcurrencyError",
    "ConsumerSpec",
    "DeadLetter",
    "Delivery",
    "Handler",
    "Logged",
    "PoisonMessage",
    "QueryHandler",
    "RequestFailed",
    "Stream",
    "Subscription",
]
