"""Wire the hosts service: the one place that knows all its parts."""

from __future__ import annotations

import asyncio
import gc
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from schemas import Envelope, Event, Message, Reply
from schemas.checkpoints import CheckpointVm, DeleteCheckpoint, RestoreVm
from schemas.host import ClockLeased, GuestMemoryDiverged, HostRegistered
from schemas.memory import (
    ExportPages,
    FlipGuestBytes,
    ImportPages,
    RunVm,
    SharePages,
    SwapInPages,
    SwapOutPages,
    UnsharePages,
)
from schemas.numa import MoveVmNuma
from schemas.service import CommandRejected, RejectionCode
from schemas.vm import CreateVm, ResizeVm, StunVm
from services.hosts.disks import GIB, Disks
from services.hosts.domain import check_transfer, decide
from services.hosts.handlers import (
    TRANSFER_CHECK_SECONDS,
    FleetHolder,
    answer_query,
    divergences,
    numa_reports,
    telemetry_step,
    transfer_step,
)
from services.hosts.state import Fleet, evolve
from services.hosts.transfers import export_pages, import_pages, read_flow
from shared.bus.protocol import DataFlows
from shared.loops import Loop
from shared.outcome import Outcome, Outcomes, answer
from shared.runtime import ServiceDefinition, Unclaimed
from shared.settings import Settings

NAME = "hosts"


# Commands decided on what the emulated machine holds, not on the fleet alone.
ON_THE_MACHINE = (
    ExportPages,
    FlipGuestBytes,
    ImportPages,
    RunVm,
    StunVm,
    SharePages,
    UnsharePages,
    SwapOutPages,
    SwapInPages,
    MoveVmNuma,
    ResizeVm,
    CheckpointVm,
    RestoreVm,
    DeleteCheckpoint,
)


def _provisional(fleet: Fleet, outcome: Outcome) -> Fleet:
    """``fleet`` as if ``outcome`` had landed."""
    for event in outcome.events:
        env = Envelope.wrap(event, producer=NAME, caused_by=outcome.cause)
        fleet = evolve(fleet, event, env)
    return fleet


# Refusals that may come of a fold behind the log, and the part of the log to catch up
# with before deciding again.
# How often a checkpoint being saved gets its next piece written.
CHECKPOINT_STEP_SECONDS = 0.02

BEHIND = {
    # The scheduler appends a reservation, then sends the command it covers.
    RejectionCode.NO_RESERVATION: "pool.>",
    # Another process registers its hosts, then starts taking their commands.
    RejectionCode.UNKNOWN_HOST: "host.>",
}


def answered(env: Envelope[Message], events: list[Event]) -> Outcome:
    """``env``'s answer. A refusal that may have been decided before this process folded
    what the command relies on has the runtime fold the log's latest and decide again."""
    stale = [BEHIND[e.code] for e in events if isinstance(e, CommandRejected) and e.code in BEHIND]
    return Outcome(events=events, cause=env, stale=tuple(dict.fromkeys(stale)))


def host_prefix(settings: Settings) -> str:
    """``auto`` gives each process (each compose replica) hosts of its own."""
    if settings.host_prefix != "auto":
        return settings.host_prefix
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] + "-h"


def host_names(settings: Settings) -> list[str]:
    return [f"{host_prefix(settings)}{i}" for i in range(1, settings.hosts + 1)]


def host_shape(host: str, cpu_cores: int = 16) -> HostRegistered:
    """Every emulated host of this process has the same shape: 16 cores (or
    ``VPLANE_HOST_CPU_CORES``) of 2.4 GHz, 64 GiB over two NUMA nodes, 8 GiB of swap,
    10 Gbit/s and 2 GB/s of storage, 200 GiB of it a scratch pool for its VMs."""
    return HostRegistered(
        host=host,
        cpu_cores=cpu_cores,
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
    disks = Disks(settings.datastore_dir(), int(settings.datastore_gib * GIB))
    holder = FleetHolder(hosts, disks, settings.tick_seconds * settings.speed)
    holder.machine.live = False

    def fold(seq: int, env: Envelope[Message]) -> None:
        if isinstance(env.data, ClockLeased):
            holder.leased_until = max(holder.leased_until, env.data.until_sim_time)
            return
        if isinstance(env.data, GuestMemoryDiverged):
            holder.divergences_logged.add(env.data.event_seq)
        before = holder.fleet
        holder.fleet = evolve(before, env.data, env)
        holder.machine.apply(before, env.data, seq)

    async def on_command(env: Envelope[Message]) -> Outcome:
        fleet = holder.fleet
        match env.data:
            case ExportPages() | ImportPages():
                if refused := check_transfer(fleet, env):
                    return answer(env, *refused)
                if isinstance(env.data, ExportPages):
                    return export_pages(holder.machine, env)
        return answered(env, decide(fleet, env, holder.machine.facts(fleet)))

    async def on_commands(envs: Sequence[Envelope[Message]]) -> list[Outcome]:
        """The first command's answer, and those of the ones after it that the fleet
        alone decides, each on the fleet the answers before it leave. A command that
        reads the machine (its pages, its guests' use) waits until those have landed:
        the machine sees an answer only once it is folded."""
        outcomes = [await on_command(envs[0])]
        fleet = holder.fleet
        for env in envs[1:]:
            fleet = _provisional(fleet, outcomes[-1])
            if isinstance(env.data, ON_THE_MACHINE):
                break
            outcomes.append(answered(env, decide(fleet, env, holder.machine.facts(fleet))))
        return outcomes

    async def prepare(
        env: Envelope[Message], flows: DataFlows
    ) -> Callable[[], Awaitable[Outcomes]] | None:
        """An import reads its data flow first, and a restore (or a VM made from a
        checkpoint) reads back the checkpoint's file, without holding up queries or other
        commands."""
        if isinstance(env.data, RestoreVm | CreateVm) and env.data.checkpoint is not None:
            checkpoint = env.data.checkpoint
            found = await asyncio.to_thread(
                holder.machine.checkpoints.problem, holder.fleet, checkpoint
            )

            async def restore() -> Outcomes:
                facts = replace(
                    holder.machine.facts(holder.fleet), checkpoint_problem=lambda _: found
                )
                return answered(env, decide(holder.fleet, env, facts))

            return restore
        if not isinstance(env.data, ImportPages) or check_transfer(holder.fleet, env):
            return None
        chunks = await read_flow(flows, env)

        async def imported() -> Outcomes:
            if refused := check_transfer(holder.fleet, env):
                return answer(env, *refused)
            return answer(env, *import_pages(holder.machine, env, chunks))

        return imported

    async def query(env: Envelope[Message]) -> Reply:
        return await answer_query(holder, env)

    async def register_hosts() -> list[Outcome]:
        # Everything rebuilt so far lives as long as the process: keep the collector off it.
        gc.freeze()
        holder.machine.live = True
        holder.machine.checkpoints.check_files(holder.fleet, hosts)
        holder.resume(settings.tick_seconds * settings.speed)
        # Keyed by host: a host is registered once, whichever process registers it.
        return [
            *(
                Outcome(events=[host_shape(h, settings.host_cpu_cores)], key=f"register:{h}")
                for h in hosts
                if h not in holder.fleet.hosts
            ),
            *divergences(holder),
        ]

    async def publish_telemetry() -> list[Outcome]:
        step = settings.tick_seconds * settings.speed
        return [telemetry_step(holder, step), *numa_reports(holder, step), *divergences(holder)]

    async def finish_transfers() -> list[Outcome]:
        return transfer_step(holder, settings.speed)

    async def save_checkpoints() -> list[Outcome]:
        checkpoints = holder.fleet.checkpoints
        return [
            Outcome(
                events=[event],
                cause=saved.cause if (saved := checkpoints.get(event.checkpoint)) else None,
                key=f"{event.type_name()}:{event.checkpoint}",
            )
            for event in holder.machine.checkpoints.step(holder.fleet)
        ]

    return ServiceDefinition(
        name=NAME,
        fold=fold,
        # The ledger's reservations too: a host changes what it runs only within them.
        fold_filters=(
            "host.>",
            "vm.>",
            "memory.>",
            "copy.>",
            "ha.>",
            "pool.>",
            "clock.hosts",
            # Which VMs their FT service drives.
            "ft.>",
        ),
        # A transfer's other end, or a crash that aborts it, may belong to another hosts
        # process: each follows the others' events as they are appended.
        follow=True,
        decide=on_command,
        decide_group=on_commands,
        commands={
            # Any hosts process may place a VM that names no host, on one of its own.
            "hosts-commands": ("hosts.>",),
            # Commands for this process's hosts reach only it.
            f"hosts-{host_prefix(settings)}": tuple(f"host.{h}.>" for h in hosts),
        },
        prepare=prepare,
        # A host's own questions (its pages' digests) reach the process that emulates it.
        queries={"hosts": query, **{f"host/{h}": query for h in hosts}},
        setup=register_hosts,
        loops=[
            Loop("telemetry", publish_telemetry, every=settings.tick_seconds, exclusive=False),
            Loop("transfers", finish_transfers, every=TRANSFER_CHECK_SECONDS),
            # Outside the lock: a save writes its file a piece at a time between commands.
            Loop("checkpoints", save_checkpoints, every=CHECKPOINT_STEP_SECONDS, exclusive=False),
        ],
        clock=holder.clock,
        # A command for a host no process ever registered is refused unknown-host.
        unclaimed=Unclaimed("host.*.>", lambda host: host in holder.fleet.hosts),
    )
