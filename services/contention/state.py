"""The monitor's memory, a fold over the log: the hosts, the tenant clusters and where
their workers are, the open contention episodes, the scalings it decided, and the slots
each worker was last given."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from immutables import Map

from schemas import Message
from schemas.contention import ContentionCleared, ContentionDetected, Direction, ScalingDecided
from schemas.host import HostRegistered
from schemas.tenants import ClusterCreated, ClusterScaled, SlotAllocation, SlotsAllocated


@dataclass(frozen=True, slots=True)
class Cluster:
    spec: ClusterCreated
    workers: tuple[str, ...] = ()
    slots: Map[str, SlotAllocation] = field(default_factory=Map)

    def slots_of(self, vm: str) -> tuple[int, int]:
        s = self.slots.get(vm)
        cpu = self.spec.worker_cpu
        return (s.map_slots, s.reduce_slots) if s else (cpu, max(1, cpu // 2))


@dataclass(frozen=True, slots=True)
class Monitor:
    hosts: frozenset[str] = frozenset()
    clusters: Map[str, Cluster] = field(default_factory=Map)
    owner: Map[str, str] = field(default_factory=Map)  # worker VM -> cluster
    # Open episodes by host (contended now), and every episode ever opened.
    episodes: Map[str, str] = field(default_factory=Map)
    # (episode, cluster, direction) -> delta: what was decided, so it is decided once.
    decided: Map[tuple[str, str, Direction], int] = field(default_factory=Map)
    # Workers each cluster gave up to contention on a host and has not had back:
    # (host, cluster) -> (episode, count).
    owed: Map[tuple[str, str], tuple[str, int]] = field(default_factory=Map)


def evolve(m: Monitor, event: Message) -> Monitor:  # noqa: PLR0911
    match event:
        case HostRegistered():
            return replace(m, hosts=m.hosts | {event.host})
        case ClusterCreated():
            return replace(m, clusters=m.clusters.set(event.cluster, Cluster(event)))
        case ClusterScaled() if event.cluster in m.clusters:
            c = m.clusters[event.cluster]
            workers = tuple(w for w in (*c.workers, *event.added) if w not in event.removed)
            owner = m.owner
            for vm in event.added:
                owner = owner.set(vm, event.cluster)
            c = replace(c, workers=workers)
            return replace(m, clusters=m.clusters.set(event.cluster, c), owner=owner)
        case SlotsAllocated() if event.cluster in m.clusters:
            c = m.clusters[event.cluster]
            slots = c.slots
            for s in event.slots:
                slots = slots.set(s.vm, s)
            return replace(m, clusters=m.clusters.set(event.cluster, replace(c, slots=slots)))
        case ContentionDetected():
            return replace(m, episodes=m.episodes.set(event.host, event.episode))
        case ContentionCleared() if event.host in m.episodes:
            return replace(m, episodes=m.episodes.delete(event.host))
        case ScalingDecided():
            key = (event.episode, event.cluster, event.direction)
            m = replace(m, decided=m.decided.set(key, event.delta))
            spot = (event.host, event.cluster)
            if event.direction is Direction.DOWN:
                _, before = m.owed.get(spot, (event.episode, 0))
                return replace(m, owed=m.owed.set(spot, (event.episode, before - event.delta)))
            return replace(m, owed=m.owed.delete(spot) if spot in m.owed else m.owed)
    return m
