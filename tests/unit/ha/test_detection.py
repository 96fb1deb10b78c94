"""Failure detection in scheduler-high: silence is measured against the newest heartbeat
of any host, and what the detector has heard survives a restart of the scheduler."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Envelope
from schemas.ha import HostFailed
from schemas.host import HostTelemetry
from schemas.pool import Owner
from services.hosts.bootstrap import host_shape
from services.scheduler.failing import check, heard
from services.scheduler.holder import Holder, Knobs
from services.scheduler.state import evolve


def detector() -> Holder:
    holder = Holder(Owner.HIGH, Knobs(failure_ticks=5, tick_seconds=1.0))
    for seq, host in enumerate(("h1", "h2"), start=1):
        holder.state = evolve(holder.state, seq, Envelope.wrap(host_shape(host), producer="hosts"))
    return holder


def beat(holder: Holder, host: str, at: float) -> None:
    sample = HostTelemetry(
        host=host,
        tick=int(at),
        cpu_capacity_mhz=38_400,
        cpu_demand_mhz=0,
        cpu_used_mhz=0,
        mem_capacity_mib=65_536,
        mem_reserved_mib=0,
        vms_running=0,
        vms_total=0,
        vms=[],
    )
    env = Envelope.wrap(sample, producer="hosts")
    heard(holder, env.model_copy(update={"occurred_at": datetime.fromtimestamp(at, UTC)}))


def failed(holder: Holder, now: float) -> list[str]:
    return [e.host for o in check(holder, now) for e in o.events if isinstance(e, HostFailed)]


def test_a_host_silent_past_the_limit_is_declared_failed_with_its_evidence() -> None:
    holder = detector()
    beat(holder, "h1", 1000.0)
    for t in range(1000, 1006):
        beat(holder, "h2", float(t))
    assert failed(holder, 1005.0) == []
    beat(holder, "h2", 1006.0)
    [outcome] = check(holder, 1006.0)
    [event] = outcome.events
    assert isinstance(event, HostFailed)
    assert (event.host, event.last_tick, event.missed_ticks) == ("h1", 1000, 6)


def test_a_restarted_detector_keeps_what_it_heard() -> None:
    """Stopped and started again (its heartbeats carried in ServiceStopped), the detector
    declares h1 failed on the same beat as one that never stopped; one that starts from
    nothing (a process killed outright) gives every host a full silence from its start."""
    before = detector()
    beat(before, "h1", 1000.0)
    beat(before, "h2", 1003.0)
    restarted, killed = detector(), detector()
    restarted.load(before.save())
    for holder in (restarted, killed):
        assert failed(holder, 1003.5) == []
        beat(holder, "h2", 1006.0)
    assert failed(restarted, 1006.0) == ["h1"]
    assert failed(killed, 1006.0) == []
