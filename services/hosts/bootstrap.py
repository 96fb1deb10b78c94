"""Wire the hosts service: the one place that knows all its parts."""

from __future__ import annotations

import gc
import re
import socket

from schemas import Envelope, Event, Message, Reply
from schemas.host import HostRegistered
from schemas.memory import ExportPages, ImportPages
from services.hosts.domain import check_transfer, decide
from services.hosts.handlers import FleetHolder, answer_query, telemetry_loop, transfer_loop
from services.hosts.state import evolve
from services.hosts.transfers import export_pages, import_pages
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings

NAME = "hosts"


def host_prefix(settings: Settings) -> str:
    """``auto`` gives each process (each compose replica) hosts of its own."""
    if settings.host_prefix != "auto":
        return settings.host_prefix
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] + "-h"


def host_names(settings: Settings) -> list[str]:
    return [f"{host_prefix(settings)}{i}" for i in range(1, settings.hosts + 1)]


def host_shape(host: str) -> HostRegistered:
    """Every emulated host of this process has the same shape: 16 cores of 2.4 GHz, 64 GiB
    over two NUMA nodes, 8 GiB of swap, 10 Gbit/s and 2 GB/s of storage, 200 GiB of it a
    scratch pool for its VMs."""
    return HostRegistered(
        host=host,
        cpu_cores=16,
        cpu_mhz=2400,
        mem_mib=64 * 1024,
        numa_nodes=2,
        swap_mib=8 * 1024,
        net_mbps=10_000,
        storage_mbs=2_000,
        storage_gib=10_240,
        scratch_mib=200 * 1024,
    )


def build(settings: Settings) -> ServiceDefinition:
    hosts = host_names(settings)
    holder = FleetHolder(hosts)

    def fold(_seq: int, env: Envelope[Message]) -> None:
        before = holder.fleet
        holder.fleet = evolve(before, env.data, env)
        holder.machine.apply(before, env.data)

    async def on_command(env: Envelope[Message]) -> list[Event]:
        fleet = holder.fleet
        match env.data:
            case ExportPages() | ImportPages():
                if refused := check_transfer(fleet, env):
                    return refused
                move = export_pages if isinstance(env.data, ExportPages) else import_pages
                assert holder.bus is not None, "set up before any command is taken"
                return await move(holder.bus, holder.machine, env)
        return decide(fleet, env, holder.machine.facts(fleet))

    async def answer(env: Envelope[Message]) -> Reply:
        return await answer_query(holder, env)

    async def register_hosts(runtime: Runtime) -> None:
        holder.bus = runtime.bus
        missing = [host_shape(h) for h in hosts if h not in holder.fleet.hosts]
        await runtime.publish(list(missing), caused_by=None)
        # Everything rebuilt so far lives as long as the process: keep the collector off it.
        gc.freeze()

    async def publish_telemetry(runtime: Runtime) -> None:
        await telemetry_loop(runtime, holder, settings.tick_seconds, settings.speed)

    async def finish_transfers(runtime: Runtime) -> None:
        await transfer_loop(runtime, holder, settings.speed)

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        fold_filters=("host.>", "vm.>", "copy.>"),
        # A transfer's other end, or a crash that aborts it, may belong to another hosts
        # process: each follows the others' events as they are appended.
        follow=True,
        decide=on_command,
        commands={
            # Any hosts process may place a VM that names no host, on one of its own.
            "hosts-commands": ("hosts.>",),
            # Commands for this process's hosts reach only it.
            f"hosts-{host_prefix(settings)}": tuple(f"host.{h}.>" for h in hosts),
        },
        queries={"hosts": answer},
        setup=register_hosts,
        loops=[publish_telemetry, finish_transfers],
        clock=lambda: holder.sim_time(settings.tick_seconds * settings.speed),
    )
