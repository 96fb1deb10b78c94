"""The NATS half of the bus benchmark: raw nats-py JetStream next to ``NatsBus``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any

import nats
from _common import (
    SendBatch,
    Settings,
    Tally,
    VplaneSide,
    chunks,
    run_pair,
    unique_tag,
    vm_envelope,
)
from nats.js import api

from shared.bus.nats import NatsBus

RAW_STREAM = "BENCHRAW"
RAW_PREFIX = "benchraw.evt"
RAW_DURABLE = "bench-raw"


class RawNats:
    """Plain nats-py JetStream, configured like vplane's event stream and consumers."""

    def __init__(self, url: str, payload: bytes, *, chunk: int, batch: int) -> None:
        self.url = url
        self.payload = payload
        self.chunk = chunk
        self.batch = batch
        self.tally = Tally()
        # Msg-Id -> perf_counter() at publish, only while measuring latency.
        self.stamps: dict[str, float] = {}
        self._nc: Any = None
        self._js: Any = None
        self._task: asyncio.Task[None] | None = None
        self._serial = 0

    async def start(self) -> None:
        self._nc = await nats.connect(self.url, name="bench-raw", connect_timeout=2)
        self._js = self._nc.jetstream(timeout=10)
        jsm = self._nc.jsm()
        await jsm.add_stream(
            api.StreamConfig(
                name=RAW_STREAM,
                subjects=[f"{RAW_PREFIX}.>"],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
                discard=api.DiscardPolicy.NEW,
                duplicate_window=120.0,
            )
        )
        await jsm.add_consumer(
            RAW_STREAM,
            api.ConsumerConfig(
                durable_name=RAW_DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=-1,
                max_ack_pending=max(self.batch * 4, 1000),
                filter_subjects=[f"{RAW_PREFIX}.vm.>"],
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        sub = await self._js.pull_subscribe_bind(durable=RAW_DURABLE, stream=RAW_STREAM)
        self._task = asyncio.create_task(self._consume(sub), name="bench-raw-consumer")

    async def _consume(self, sub: Any) -> None:
        tally, stamps = self.tally, self.stamps
        while True:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except TimeoutError:
                # nats-py raises its own TimeoutError, FetchTimeoutError, and on some
                # paths a bare asyncio.TimeoutError: all are TimeoutError on 3.11+.
                continue
            for msg in msgs:
                if stamps:
                    sent = stamps.pop(msg.headers[api.Header.MSG_ID], None)
                    if sent is not None:
                        tally.latencies.append(time.perf_counter() - sent)
                await msg.ack()
                tally.hit()

    def prepare(self, count: int) -> list[tuple[str, str]]:
        """Distinct subjects (one per aggregate, as vplane has) and uuid message ids."""
        self._serial += 1
        return [
            (f"{RAW_PREFIX}.vm.r{self._serial}-{i:06d}", str(uuid.uuid4())) for i in range(count)
        ]

    async def publish(self, items: Sequence[tuple[str, str]]) -> None:
        js, payload = self._js, self.payload
        for part in chunks(len(items), self.chunk):
            futures = [
                await js.publish_async(
                    items[i][0], payload, headers={api.Header.MSG_ID: items[i][1]}
                )
                for i in part
            ]
            await asyncio.gather(*futures)

    def sender(self, items: Sequence[tuple[str, str]]) -> SendBatch:
        async def send(first: int, count: int) -> None:
            js, payload, stamps = self._js, self.payload, self.stamps
            now = time.perf_counter()
            futures = []
            for subject, msg_id in items[first : first + count]:
                stamps[msg_id] = now
                futures.append(
                    await js.publish_async(subject, payload, headers={api.Header.MSG_ID: msg_id})
                )
            await asyncio.gather(*futures)

        return send

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()


class NatsVplane(VplaneSide):
    """``NatsBus`` in a namespace of its own."""

    def __init__(self, url: str, *, chunk: int, batch: int) -> None:
        self.nats_bus = NatsBus(url, namespace=f"bench{unique_tag()}", client_name="bench")
        super().__init__(self.nats_bus, chunk=chunk, batch=batch)

    async def close(self) -> None:
        try:
            await self.nats_bus.close()
        except Exception:
            # A dead consumer loop re-raises its error from stop(); finish the job.
            if self.restarts or self.died() is not None:
                with contextlib.suppress(Exception):
                    await self.nats_bus.nc.close()
            else:
                raise


async def run_nats(url: str, opts: Settings) -> dict[str, Any]:
    """Both NATS sides against one nats-server; the figures as a JSON-ready dict."""
    raw = RawNats(url, vm_envelope("v0", 0).encode(), chunk=opts.chunk, batch=opts.batch)
    vplane = NatsVplane(url, chunk=opts.chunk, batch=opts.batch)
    return {"url": url} | await run_pair(raw, vplane, opts)
