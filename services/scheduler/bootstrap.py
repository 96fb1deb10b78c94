"""Wire a scheduler: ``VPLANE_PRIORITY`` makes it scheduler-high or scheduler-low."""

from __future__ import annotations

import time

from schemas import Envelope, Event, Message
from schemas.pool import Owner
from schemas.scheduling import PlacementRequested, PlaceVm
from schemas.service import CommandRejected, RejectionCode
from services.scheduler.rounds import Holder, resend_unconfirmed, run_rounds
from services.scheduler.state import evolve
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings


def build(settings: Settings) -> ServiceDefinition:
    priority = Owner(settings.priority)
    name = f"scheduler-{priority.value}"
    holder = Holder(priority)
    period = settings.round_seconds

    def fold(seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, seq, env)

    async def on_command(env: Envelope[Message]) -> list[Event]:
        cmd = env.data
        if not isinstance(cmd, PlaceVm) or cmd.priority != priority:
            return [
                CommandRejected.of(
                    env, RejectionCode.WRONG_STATE, f"{name} does not handle {env.type}"
                )
            ]
        if cmd.vm in holder.state.known or cmd.vm in holder.state.created:
            return [
                CommandRejected.of(
                    env, RejectionCode.ALREADY_EXISTS, f"VM {cmd.vm} was already asked for"
                )
            ]
        return [
            PlacementRequested(
                vm=cmd.vm,
                priority=cmd.priority,
                cpu=cmd.cpu,
                mem_mib=cmd.mem_mib,
                min_cpu=cmd.min_cpu,
                min_mem_mib=cmd.min_mem_mib,
                workload=cmd.workload,
                memory_mode=cmd.memory_mode,
                seed=cmd.seed,
            )
        ]

    async def setup(runtime: Runtime) -> None:
        await resend_unconfirmed(runtime, holder)

    async def rounds(runtime: Runtime) -> None:
        await run_rounds(runtime, holder, period, high_wait=period / 2)

    return ServiceDefinition(
        name=name,
        fold=fold,
        fold_filters=("host.>", "pool.>", "vm.>", "scheduler.>"),
        follow=True,
        decide=on_command,
        commands={f"{name}-commands": (f"scheduler.{priority.value}.>",)},
        setup=setup,
        loops=[rounds],
        clock=time.time,
    )
