"""The hosts service's I/O edges: telemetry ticks and query answers."""

from __future__ import annotations

import asyncio
import time

from schemas import Envelope, Message, Reply
from schemas.host import HostTelemetry
from schemas.queries import HostList, HostView, ListHosts, ListVms, VmList, VmView
from services.hosts.domain import Fleet, sample
from shared.bus import PoisonMessage
from shared.runtime import Runtime


class FleetHolder:
    """The one mutable cell: the current fold of the hosts' events."""

    def __init__(self) -> None:
        self.fleet = Fleet()
        self.tick = 0
        self.samples: dict[str, HostTelemetry] = {}


async def telemetry_loop(
    runtime: Runtime, holder: FleetHolder, hosts: list[str], tick_seconds: float, seed: int
) -> None:
    """Publish every host's sample once per tick, on a fixed schedule that does not drift."""
    start = time.monotonic()
    while True:
        fleet = holder.fleet
        sim_time = runtime.definition.clock()
        for host in hosts:
            if host in fleet.hosts:
                data = holder.samples[host] = sample(fleet, host, holder.tick, seed)
                await runtime.bus.emit(
                    Envelope.wrap(data, producer=runtime.name, sim_time=sim_time)
                )
        holder.tick += 1
        next_at = start + holder.tick * tick_seconds
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def answer_query(holder: FleetHolder, env: Envelope[Message]) -> Reply:
    fleet = holder.fleet
    match env.data:
        case ListHosts():
            return HostList(
                hosts=[
                    HostView(
                        host=h.name,
                        cpu_cores=h.cpu_cores,
                        cpu_mhz=h.cpu_mhz,
                        mem_mib=h.mem_mib,
                        mem_reserved_mib=fleet.mem_reserved(h.name),
                        cpu_demand_mhz=s.cpu_demand_mhz if (s := holder.samples.get(h.name)) else 0,
                        vms=len(fleet.vms_on(h.name)),
                    )
                    for h in sorted(fleet.hosts.values(), key=lambda h: h.name)
                ]
            )
        case ListVms():
            return VmList(
                vms=[
                    VmView(
                        vm=v.name,
                        host=v.host,
                        cpu=v.cpu,
                        mem_mib=v.mem_mib,
                        priority=v.priority,
                        state=v.state,
                    )
                    for v in sorted(fleet.vms.values(), key=lambda v: v.name)
                ]
            )
    raise PoisonMessage(f"the hosts service does not answer {env.type}")
