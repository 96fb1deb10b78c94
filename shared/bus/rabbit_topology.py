"""The exchanges, streams and queues vplane declares on RabbitMQ, and their names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange

from shared.bus import subjects
from shared.bus.protocol import ConsumerSpec, Stream

H_REASON = "x-vplane-reason"
H_COUNT = "x-vplane-delivery-count"
H_SUBJECT = "x-vplane-subject"
H_CONSUMER = "x-vplane-consumer"

TELEMETRY_MAX_AGE = "15m"
TELEMETRY_MAX_BYTES = 256 * 1024 * 1024
DEAD_LETTER_MAX_AGE = "14D"
DATA_EXPIRES_MS = 15 * 60 * 1000


class Topology:
    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.exchange_names = {
            "events": f"{namespace}.events",
            "commands": f"{namespace}.commands",
            "telemetry": f"{namespace}.telemetry",
            "dlx": f"{namespace}.dlx",
            "data": f"{namespace}.data",
        }
        # Queues declared through this topology, so that tools can remove them.
        self.declared: set[str] = set()
        self.log = f"{namespace}.log"
        self.tel = f"{namespace}.tel"
        self.dlq = f"{namespace}.dlq"

    def marker_key(self, key: str) -> str:
        return f"{self.ns}.mark.{key}"

    def query_queue(self, target: str) -> str:
        return subjects.query_subject(self.ns, target)

    def data_queue(self, flow: str) -> str:
        return f"{self.ns}.data.{flow}"

    async def declare_data(self, channel: AbstractChannel, flow: str) -> str:
        """A queue per data flow, so its reader gets only its chunks; unused, it expires."""
        name = self.data_queue(flow)
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-expires": DATA_EXPIRES_MS}
        )
        await queue.bind(self.exchange_names["data"], flow)
        self.declared.add(name)
        return name

    def consumer_queue(self, name: str) -> str:
        return f"{self.ns}.q.{name}"

    def queues_of(self, consumers: Iterable[str]) -> set[str]:
        """Every queue of this namespace that is known: fixed ones, declared ones, and
        those of the named consumers."""
        named = {self.consumer_queue(c) for c in consumers}
        return (
            {self.log, self.tel, self.dlq}
            | self.declared
            | named
            | {f"{q}.ready" for q in named | self.declared if not q.endswith(".ready")}
        )

    def patterns(self, stream: Stream, filters: tuple[str, ...]) -> tuple[str, ...]:
        """Full subject patterns, NATS-style; routing keys are the same strings."""
        return tuple(subjects.stream_subject(self.ns, stream, f) for f in filters or (">",))

    @staticmethod
    def binding(pattern: str) -> str:
        """A NATS-style pattern as a topic-exchange binding key."""
        return pattern[:-1] + "#" if pattern.endswith(">") else pattern

    async def declare(self, channel: AbstractChannel) -> dict[str, AbstractExchange]:
        """Declare everything (idempotent) and return the exchanges by role."""
        exchanges = {
            role: await channel.declare_exchange(
                name,
                aio_pika.ExchangeType.DIRECT if role == "data" else aio_pika.ExchangeType.TOPIC,
                durable=True,
            )
            for role, name in self.exchange_names.items()
        }
        log = await channel.declare_queue(
            self.log, durable=True, arguments={"x-queue-type": "stream"}
        )
        await log.bind(exchanges["events"], f"{self.ns}.evt.#")
        await log.bind(exchanges["events"], f"{self.ns}.mark.#")
        tel = await channel.declare_queue(
            self.tel,
            durable=True,
            arguments={
                "x-queue-type": "stream",
                "x-max-age": TELEMETRY_MAX_AGE,
                "x-max-length-bytes": TELEMETRY_MAX_BYTES,
                "x-stream-max-segment-size-bytes": 16 * 1024 * 1024,
            },
        )
        await tel.bind(exchanges["telemetry"], "#")
        dlq = await channel.declare_queue(
            self.dlq,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": DEAD_LETTER_MAX_AGE},
        )
        await dlq.bind(exchanges["dlx"], "#")
        return exchanges

    def consumer_arguments(self, spec: ConsumerSpec) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # The dispatcher dead-letters on the last attempt itself; the broker's limit
            # catches a message that crashes its consumer every time it is delivered.
            "x-delivery-limit": spec.max_deliver,
            "x-dead-letter-exchange": self.exchange_names["dlx"],
            "x-dead-letter-routing-key": spec.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def delete_all(self, channel: AbstractChannel, consumers: Iterable[str]) -> None:
        for name in sorted(self.queues_of(consumers)):
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.queue_delete(name)
        for name in self.exchange_names.values():
            with contextlib.suppress(aiormq.exceptions.AMQPError):
                await channel.exchange_delete(name)


def header_int(value: object) -> int:
    return int(value) if isinstance(value, int | str) else 0


def death_reason(headers: dict[str, Any]) -> str:
    """Why the broker itself dead-lettered a message (for example its delivery limit)."""
    reason = headers.get("x-first-death-reason")
    deaths = headers.get("x-death") or []
    if not reason and deaths and isinstance(deaths[0], dict):
        reason = deaths[0].get("reason")
    return f"broker: {reason or 'dead-lettered'}"
