"""The contract: every message vplane's services exchange, and nothing else."""

from schemas import host, memory, pool, queries, scheduling, service, transfers, vm
from schemas.base import Command, Event, Kind, Message, Query, Reply, Telemetry, registry
from schemas.envelope import Envelope

__all__ = [
    "Command",
    "Envelope",
    "Event",
    "Kind",
    "Message",
    "Query",
    "Reply",
    "Telemetry",
    "host",
    "memory",
    "pool",
    "queries",
    "registry",
    "scheduling",
    "service",
    "transfers",
    "vm",
]
