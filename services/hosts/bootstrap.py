"""Wire the hosts service: the one place that knows all its parts."""

from __future__ import annotations

import time

from schemas import Envelope, Event, Message, Reply
from schemas.host import HostRegistered
from services.hosts.domain import decide, evolve
from services.hosts.handlers import FleetHolder, answer_query, telemetry_loop
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings

NAME = "hosts"
# Every emulated host of this first model has the same shape.
HOST_CORES = 16
HOST_MHZ = 2400
HOST_MEM_MIB = 64 * 1024


def host_names(settings: Settings) -> list[str]:
    return [f"{settings.host_prefix}{i}" for i in range(1, settings.hosts + 1)]


def build(settings: Settings) -> ServiceDefinition:
    holder = FleetHolder()
    hosts = host_names(settings)
    started = time.monotonic()

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.fleet = evolve(holder.fleet, env.data)

    def on_command(env: Envelope[Message]) -> list[Event]:
        return decide(holder.fleet, env)

    async def answer(env: Envelope[Message]) -> Reply:
        return await answer_query(holder, env)

    async def register_hosts(runtime: Runtime) -> None:
        missing = [h for h in hosts if h not in holder.fleet.hosts]
        for host in missing:
            event = HostRegistered(
                host=host, cpu_cores=HOST_CORES, cpu_mhz=HOST_MHZ, mem_mib=HOST_MEM_MIB
            )
            await runtime.publish([event], caused_by=None)

    async def publish_telemetry(runtime: Runtime) -> None:
        await telemetry_loop(runtime, holder, hosts, settings.tick_seconds, settings.seed)

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        fold_filters=("host.>", "vm.>"),
        decide=on_command,
        command_filters=("hosts.>", *(f"host.{h}.>" for h in hosts)),
        queries={"hosts": answer},
        setup=register_hosts,
        loops=[publish_telemetry],
        clock=lambda: (time.monotonic() - started) * settings.speed,
    )
