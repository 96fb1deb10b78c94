"""The contract: every message vplane's services exchange, and nothing else."""

from schemas import (
    checkpoints,
    contention,
    ha,
    host,
    memory,
    migration,
    numa,
    pool,
    queries,
    scheduling,
    scratch,
    service,
    tenants,
    transfers,
    vm,
)
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
    "checkpoints",
    "contention",
    "ha",
    "host",
    "memory",
    "migration",
    "numa",
    "pool",
    "queries",
    "registry",
    "scheduling",
    "scratch",
    "service",
    "tenants",
    "transfers",
    "vm",
]
