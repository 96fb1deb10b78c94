"""What the log must show after faults: every command answered once and whole, every
command an outcome issued sent once its cause was in the log (and as the log records
it), no event twice, no host over-committed."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from schemas import Envelope, Message
from schemas.service import CommandsIssued
from shared.effects import issued
from shared.testing import poll
from shared.testing_faults import Sent
from tests.unit.stack import Stack

# Each announces one process's start or stop; a restart repeats them, as it should.
ANNOUNCEMENTS = {"ServiceStarted", "ServiceStopped"}


@dataclass
class Findings:
    """Problems that waiting may yet cure (``pending``) and those it cannot (``broken``)."""

    pending: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


def _fact(env: Envelope[Message]) -> tuple[Any, ...]:
    return (env.producer, env.causation_id, env.type, env.subject, env.data.model_dump_json())


def _payload(env: Envelope[Any]) -> tuple[Any, ...]:
    return (env.type, env.subject, env.causation_id, env.correlation_id, env.data)


async def findings(stack: Stack, commands: set[uuid.UUID] | None = None) -> Findings:
    """The log and what was sent, checked. ``commands``: ids of commands the test sent
    itself, to be answered too."""
    sent = list(stack.record.sent)
    log = [e.envelope async for e in stack.bus.replay() if e.envelope is not None]
    out = Findings()
    out.broken += _repeated(log)
    sends = _sends(log, sent, out)
    _answers(log, sends, commands or set(), out)
    ledger = await stack.ledger()
    for host in ledger.capacity:
        free = ledger.free(host)
        if min(free.cpu_mhz, free.mem_mib, free.net_mbps, free.storage_mbs) < 0:
            out.broken.append(f"host {host} over-committed: free {free}")
    return out


def _repeated(log: list[Envelope[Message]]) -> list[str]:
    """An id twice, or one fact under two ids (a decision taken again with new ids)."""
    found = []
    ids = [e.id for e in log]
    if len(ids) != len(set(ids)):
        found.append(f"{len(ids) - len(set(ids))} event ids appear twice in the log")
    facts: dict[tuple[Any, ...], int] = defaultdict(int)
    for env in log:
        if env.type not in ANNOUNCEMENTS:
            facts[_fact(env)] += 1
    found += [f"the same fact {f[2]} {f[3]} logged {n} times" for f, n in facts.items() if n > 1]
    return found


def _sends(
    log: list[Envelope[Message]], sent: list[Sent], out: Findings
) -> dict[uuid.UUID, list[Envelope[Any]]]:
    """Each command an outbox record holds is sent, after the record landed, as
    recorded; nothing else is sent. Returns the sends by command id."""
    recorded: dict[uuid.UUID, Envelope[Any]] = {}
    for env in log:
        if isinstance(env.data, CommandsIssued):
            recorded.update((cmd.id, cmd) for cmd in issued(env.data))
    sends: dict[uuid.UUID, list[Envelope[Any]]] = defaultdict(list)
    for s in sent:
        sends[s.env.id].append(s.env)
        if not s.recorded_before:
            out.broken.append(f"{s.env.type} {s.env.id} sent before its outbox record landed")
    for cmd_id, cmd in recorded.items():
        if cmd_id not in sends:
            out.pending.append(f"{cmd.type} {cmd.subject} issued, not sent")
        elif any(_payload(c) != _payload(cmd) for c in sends[cmd_id]):
            out.broken.append(
                f"{cmd.type} {cmd_id} sent otherwise than recorded: "
                f"{[c.data for c in sends[cmd_id]]} vs {cmd.data}"
            )
    out.broken += [
        f"{envs[0].type} {cmd_id} sent but never recorded"
        for cmd_id, envs in sends.items()
        if cmd_id not in recorded
    ]
    return sends


def _answers(
    log: list[Envelope[Message]],
    sends: dict[uuid.UUID, list[Envelope[Any]]],
    commands: set[uuid.UUID],
    out: Findings,
) -> None:
    """The events a command caused come from one producer in one run of the log."""
    positions: dict[uuid.UUID, list[int]] = defaultdict(list)
    producers: dict[uuid.UUID, set[str]] = defaultdict(set)
    for i, env in enumerate(log):
        if env.causation_id is not None:
            positions[env.causation_id].append(i)
            producers[env.causation_id].add(env.producer)
    for cmd_id in set(sends) | commands:
        at = positions.get(cmd_id)
        name = sends[cmd_id][0].type if cmd_id in sends else f"command {cmd_id}"
        if not at:
            out.pending.append(f"{name} {cmd_id} not answered")
        elif at != list(range(at[0], at[0] + len(at))) or len(producers[cmd_id]) > 1:
            answer = [log[i].type for i in at]
            out.broken.append(f"{name} {cmd_id} answered in parts: {answer} at {at}")


async def assert_exactly_once(
    stack: Stack, commands: set[uuid.UUID] | None = None, *, timeout: float = 20.0
) -> None:
    """Wait until nothing is pending, then require nothing broken and no service failed."""
    found = await poll(
        lambda: findings(stack, commands),
        lambda f: bool(f.broken) or not f.pending,
        timeout=timeout,
        what="every command sent and answered",
    )
    assert found.broken == [], found.broken
    assert stack.failed() == {}
