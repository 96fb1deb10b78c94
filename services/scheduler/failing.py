"""Failure detection, in scheduler-high: a host whose telemetry (its heartbeat) stops for
``failure_ticks`` ticks is declared failed, whether it was crashed by command or its process
died; one that sends telemetry again has returned. The evidence goes in the events."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Envelope, Message
from schemas.ha import HostFailed, HostReturned
from services.scheduler.holder import Holder
from shared.bus import PoisonMessage
from shared.outcome import Outcome
from shared.samples import host_sample


def heard(holder: Holder, env: Envelope[Message]) -> bool:
    """Note a host's heartbeat by when it was sent, so an old backlog is not taken for life;
    whether it was one (a sample of a registered host, under its own subject)."""
    try:
        sample = host_sample(env, holder.state.ledger.capacity, "failure detector")
    except PoisonMessage:
        return False
    sent = env.occurred_at.timestamp()
    last = holder.heartbeats.get(sample.host)
    if last is None or sent > last[0]:
        holder.heartbeats[sample.host] = (sent, sample.tick)
    return True


def check(holder: Holder, now: float) -> list[Outcome]:
    """HostFailed for each registered host silent too long, HostReturned for each failed
    one heard from since it was declared.

    Silence is measured against the newest heartbeat of any host, not against the wall
    clock: when this detector falls behind in reading telemetry (or the whole telemetry
    path stalls), every host looks equally late and none is declared failed. The price:
    when every host falls silent at once, none is declared failed (nor could its VMs go
    anywhere)."""
    if holder.watching_since is None:
        holder.watching_since = now
    state, knobs = holder.state, holder.knobs
    limit = knobs.failure_ticks * knobs.tick_seconds
    newest = max((sent for sent, _ in holder.heartbeats.values()), default=None)
    out: list[Outcome] = []
    for host in sorted(state.ledger.capacity):
        beat = holder.heartbeats.get(host)
        failed = state.silent.get(host)
        if failed is None:
            if newest is None:
                continue
            since = beat[0] if beat is not None else holder.watching_since
            silent = newest - since
            if silent <= limit:
                continue
            event = HostFailed(
                host=host,
                last_heartbeat_at=None if beat is None else datetime.fromtimestamp(beat[0], UTC),
                last_tick=None if beat is None else beat[1],
                silent_seconds=round(silent, 3),
                missed_ticks=int(silent // knobs.tick_seconds),
                vms=sorted(vm for vm, on in state.hosted.items() if on == host),
            )
            out.append(Outcome(events=[event], key=f"failed:{host}:{since}"))
        elif beat is not None and beat[0] > failed.occurred_at.timestamp():
            returned = HostReturned(
                host=host,
                heartbeat_at=datetime.fromtimestamp(beat[0], UTC),
                tick=beat[1],
                down_seconds=round(beat[0] - failed.occurred_at.timestamp(), 3),
            )
            out.append(Outcome(events=[returned], cause=failed, key=f"returned:{host}"))
    return out
