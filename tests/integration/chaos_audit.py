"""What a chaos run must leave in the log, checked from the log alone (never from a
service's memory): every request answered once, nothing lost or doubled, no host over
capacity at any point of the log."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors

from schemas import Envelope, Message
from schemas.scheduling import PlaceVm
from services.scheduler.ledger import Ledger, evolve
from shared.bus import Bus


@dataclass(frozen=True)
class LogView:
    entries: list[tuple[int, Envelope[Message]]]

    def of(self, *types: str) -> list[Envelope[Message]]:
        return [env for _, env in self.entries if env.type in types]

    def data(self, *types: str) -> list[Any]:
        return [env.data for env in self.of(*types)]


async def read_log(bus: Bus) -> LogView:
    undecodable = []
    entries = []
    async for entry in bus.replay():
        if entry.envelope is None:
            undecodable.append((entry.seq, entry.error))
        else:
            entries.append((entry.seq, entry.envelope))
    assert undecodable == [], f"undecodable entries in the log: {undecodable[:5]}"
    return LogView(entries)


async def raw_nats_ids(url: str, namespace: str) -> list[str]:
    """Every envelope id the EVENTS stream stores, read with a plain nats-py consumer
    (the bus's readers skip a repeated id; this one does not)."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=10)
        stream = f"{namespace.upper()}_EVENTS"
        last = (await js.stream_info(stream)).state.last_seq
        sub = await js.pull_subscribe(
            f"{namespace}.evt.>",
            stream=stream,
            config=nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.NONE),
        )
        ids: list[str] = []
        seq = 0
        deadline = time.monotonic() + 60
        while seq < last:
            try:
                msgs = await sub.fetch(1000, timeout=10)
            except nats.js.errors.ServiceUnavailableError:
                # A consumer just made on a cluster that has lost a node answers 503
                # until its leader is elected: ask again.
                assert time.monotonic() < deadline, "the cluster never served the read"
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                ids.append(json.loads(msg.data)["id"])
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()


def assert_every_request_answered_once(log: LogView, sent: list[Envelope[PlaceVm]]) -> None:
    """Each PlaceVm is taken (PlacementRequested) or refused at once, exactly once; each
    VM taken gets exactly one final answer: one VmPlaced or one CommandRejected."""
    sent_ids = {env.id for env in sent}
    accepted = Counter(
        e.causation_id for e in log.of("PlacementRequested") if e.causation_id in sent_ids
    )
    refused = Counter(
        r.command_id for r in log.data("CommandRejected") if r.command_type == "PlaceVm"
    )
    placed = Counter(p.vm for p in log.data("VmPlaced"))
    problems = []
    for env in sent:
        vm, taken, no = env.data.vm, accepted[env.id], refused[env.id]
        if taken > 1:
            problems.append(f"{vm}: accepted {taken} times")
        answers = placed[vm] + no
        if answers != 1:
            problems.append(f"{vm}: {placed[vm]} VmPlaced and {no} CommandRejected")
        if taken == 0 and placed[vm]:
            problems.append(f"{vm}: placed without being accepted")
    assert problems == [], f"requests not answered exactly once: {problems[:20]}"


def assert_nothing_lost(log: LogView) -> None:
    """Every VM placed is created, once, on the host it was placed on."""
    placed = {p.vm: p.host for p in log.data("VmPlaced")}
    created = Counter(c.vm for c in log.data("VmCreated"))
    where = {c.vm: c.host for c in log.data("VmCreated")}
    missing = sorted(vm for vm in placed if created[vm] == 0)
    twice = sorted(vm for vm, n in created.items() if n > 1)
    moved = sorted(vm for vm, host in placed.items() if vm in where and where[vm] != host)
    assert (missing, twice, moved) == ([], [], []), (
        f"placed but not created: {missing[:20]}; created twice: {twice[:20]}; "
        f"created elsewhere than placed: {moved[:20]}"
    )


def assert_nothing_doubled(log: LogView, raw_ids: list[str] | None) -> None:
    """One CapacityReserved per reservation, no event id twice (in the raw stream where
    it can be read), and a command recorded in two outbox records only as itself."""
    reserved = Counter(r.reservation for r in log.data("CapacityReserved"))
    twice = {r: n for r, n in reserved.items() if n > 1}
    assert twice == {}, f"reservations made more than once: {dict(list(twice.items())[:20])}"
    ids = raw_ids if raw_ids is not None else [str(env.id) for _, env in log.entries]
    repeated = {i: n for i, n in Counter(ids).items() if n > 1}
    assert repeated == {}, f"event ids stored more than once: {dict(list(repeated.items())[:20])}"
    # A command still unsent when its service appends again is recorded again, carried
    # over so that a restart finds it; it is the same envelope every time.
    recorded: dict[str, set[str]] = {}
    for record in log.data("CommandsIssued"):
        for cmd in record.commands:
            recorded.setdefault(json.loads(cmd)["id"], set()).add(cmd)
    changed = [c for c, versions in recorded.items() if len(versions) > 1]
    assert changed == [], f"commands recorded differently in two outbox records: {changed[:20]}"


def assert_no_host_over_capacity(log: LogView) -> Ledger:
    """The scheduler's ledger folded over the whole log: no host's free capacity is ever
    below zero, at any point."""
    ledger = Ledger()
    over = []
    for seq, env in log.entries:
        if not env.subject.startswith(("host/", "pool/")):
            continue
        ledger = evolve(ledger, seq, env.data)
        host = env.subject.partition("/")[2]
        if host in ledger.capacity:
            free = ledger.free(host)
            if min(free.cpu_mhz, free.mem_mib, free.net_mbps, free.storage_mbs) < 0:
                over.append((seq, host, free))
    assert over == [], f"hosts over capacity: {over[:10]}"
    return ledger


async def nats_backlog(url: str, namespace: str) -> dict[str, tuple[int, int]]:
    """(pending, awaiting acknowledgement) of every durable on COMMANDS and TELEMETRY;
    a broker that cannot tell yet (a leader being elected) counts as not drained."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        jsm = nc.jsm()
        backlog = {}
        for stream in ("COMMANDS", "TELEMETRY"):
            for info in await jsm.consumers_info(f"{namespace.upper()}_{stream}"):
                if info.config.durable_name:
                    backlog[f"{stream}/{info.name}"] = (
                        info.num_pending or 0,
                        info.num_ack_pending or 0,
                    )
    except (nats.errors.Error, TimeoutError) as err:
        return {f"unknown: {err!r}": (1, 0)}
    else:
        return backlog
    finally:
        await nc.close()


async def stream_leader(urls: list[str], stream: str, timeout: float = 30) -> str:
    """The name of the cluster node that leads ``stream`` (asked again while an election
    after the last fault is still under way)."""
    nc = await nats.connect(urls, connect_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                info = await nc.jsm().stream_info(stream)
            except (nats.errors.Error, TimeoutError):
                info = None
            if info is not None and info.cluster is not None and info.cluster.leader:
                return str(info.cluster.leader)
            assert time.monotonic() < deadline, f"{stream} has no leader"
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def replicas(url: str, namespace: str) -> dict[str, int]:
    """How many copies each of the namespace's streams keeps."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        prefix = f"{namespace.upper()}_"
        return {
            str(info.config.name).removeprefix(prefix): int(info.config.num_replicas or 1)
            for info in await nc.jsm().streams_info()
            if str(info.config.name).startswith(prefix)
        }
    finally:
        await nc.close()


def clock_regressions(log: LogView) -> dict[str, list[tuple[int, float, float]]]:
    """Per producer, where an event's emulated time is earlier than that of the
    producer's event before it (seq, before, then)."""
    last: dict[str, float] = {}
    back: dict[str, list[tuple[int, float, float]]] = {}
    for seq, env in log.entries:
        before = last.get(env.producer)
        if before is not None and env.sim_time < before:
            back.setdefault(env.producer, []).append((seq, before, env.sim_time))
        last[env.producer] = max(before or env.sim_time, env.sim_time)
    return back
