"""Wire the contention monitor: telemetry in; contention events, scalings and slot
allocations out."""

from __future__ import annotations

from typing import Any

from schemas import Command, Envelope, Event, Message
from schemas.contention import ContentionCleared, ContentionDetected, Direction, ScalingDecided
from schemas.host import HostTelemetry
from schemas.tenants import AllocateSlots, ScaleCluster, SlotAllocation
from services.contention.detector import Change, Thresholds, Watch, measure, observe
from services.contention.scaling import scale_down, scale_up
from services.contention.slots import allocations
from services.contention.state import Monitor, evolve
from shared.outcome import Outcome
from shared.runtime import ServiceDefinition
from shared.samples import host_sample
from shared.settings import Settings

NAME = "contention-monitor"
SLOT_TICKS = 2


class Holder:
    """The fold, and what the detector keeps of the telemetry it has seen (carried over
    a restart in ServiceStopped: shared/carried.py)."""

    def __init__(self) -> None:
        self.monitor = Monitor()
        # A host's streak of ticks; an open episode also comes back from the log.
        self.watches: dict[str, Watch] = {}
        # The slots last asked for, per worker: asked once, not again every tick until
        # the job tracker's answer is folded; and a new figure with the ticks in a row
        # it held (slots change only once it held for SLOT_TICKS).
        self.asked: dict[str, tuple[int, int]] = {}
        self.seen: dict[str, tuple[tuple[int, int], int]] = {}

    def save(self) -> dict[str, Any]:
        return {
            "watches": {h: [w.episode, w.streak] for h, w in self.watches.items()},
            "asked": {vm: list(slots) for vm, slots in self.asked.items()},
            "seen": {vm: [list(figure), n] for vm, (figure, n) in self.seen.items()},
        }

    def load(self, saved: dict[str, Any]) -> None:
        self.watches = {h: Watch(e, int(n)) for h, (e, n) in saved.get("watches", {}).items()}
        self.asked = {vm: (int(m), int(r)) for vm, (m, r) in saved.get("asked", {}).items()}
        self.seen = {
            vm: ((int(f[0]), int(f[1])), int(n)) for vm, (f, n) in saved.get("seen", {}).items()
        }


def build(_settings: Settings, thresholds: Thresholds | None = None) -> ServiceDefinition:
    holder = Holder()
    th = thresholds or Thresholds()

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.monitor = evolve(holder.monitor, env.data)

    async def on_telemetry(env: Envelope[Message]) -> list[Outcome]:
        sample = host_sample(env, holder.monitor.hosts, "contention monitor")
        return react(holder, sample, th, env)

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        fold_filters=("host.>", "cluster.>", "contention.>"),
        follow=True,
        telemetry=on_telemetry,
        carried=holder,
    )


def react(
    holder: Holder, sample: HostTelemetry, th: Thresholds, cause: Envelope[Message]
) -> list[Outcome]:
    """What one sample changes: the events and commands that follow, and the host's
    watch and asked slots, kept only once they have landed (a sample taken again after a
    failed append decides the same)."""
    m, host = holder.monitor, sample.host
    before = holder.watches.get(host) or Watch(m.episodes.get(host))
    evidence = measure(sample, workers=m.owner.keys())
    watch, change = observe(before, evidence, host, sample.tick, th)
    evidence = evidence.model_copy(update={"ticks": th.ticks_on if change else 1})
    events: list[Event] = []
    commands: list[Command] = []
    if change is Change.DETECTED and watch.episode is not None:
        episode = watch.episode
        events.append(
            ContentionDetected(host=host, episode=episode, tick=sample.tick, evidence=evidence)
        )
        for s in scale_down(m, sample, episode, evidence):
            events.append(_decided(host, episode, s.cluster, s.direction, s.delta, s.reason))
            commands.append(
                ScaleCluster(cluster=s.cluster, delta=s.delta, host=host, reason=s.reason)
            )
    elif change is Change.CLEARED:
        episode = m.episodes.get(host, f"{host}-t{sample.tick}")
        cleared = evidence.model_copy(update={"ticks": th.ticks_off})
        events.append(
            ContentionCleared(host=host, episode=episode, tick=sample.tick, evidence=cleared)
        )
    if not watch.contended:
        for episode, s in scale_up(m, sample):
            events.append(_decided(host, episode, s.cluster, s.direction, s.delta, s.reason))
            commands.append(ScaleCluster(cluster=s.cluster, delta=s.delta, reason=s.reason))
    seen = dict(holder.seen)
    asked: dict[str, tuple[int, int]] = {}
    for cluster, wanted in allocations(m, sample).items():
        slots = [a for a in wanted if _settled(seen, a) and not _asked(holder, a)]
        if not slots:
            continue
        asked.update({a.vm: (a.map_slots, a.reduce_slots) for a in slots})
        reason = f"CPU the workers get on {host} at tick {sample.tick}"
        commands.append(AllocateSlots(cluster=cluster, slots=slots, reason=reason))

    def keep() -> None:
        holder.watches[host] = watch
        holder.seen = seen
        holder.asked.update(asked)

    return [Outcome(events=events, commands=commands, cause=cause, on_landed=[keep])]


def _settled(seen: dict[str, tuple[tuple[int, int], int]], a: SlotAllocation) -> bool:
    """The figure held for SLOT_TICKS ticks in a row: a one-tick blip moves no slot (a
    slot taken away sends its task back to the queue, to start again)."""
    figure = (a.map_slots, a.reduce_slots)
    before, streak = seen.get(a.vm, (figure, 0))
    streak = streak + 1 if before == figure else 1
    seen[a.vm] = (figure, streak)
    return streak >= SLOT_TICKS


def _asked(holder: Holder, a: SlotAllocation) -> bool:
    return holder.asked.get(a.vm) == (a.map_slots, a.reduce_slots)


def _decided(
    host: str, episode: str, cluster: str, direction: Direction, delta: int, why: str
) -> ScalingDecided:
    return ScalingDecided(
        host=host, episode=episode, cluster=cluster, direction=direction, delta=delta, reason=why
    )
