"""Wire a scheduler: ``VPLANE_PRIORITY`` makes it scheduler-high or scheduler-low."""

from __future__ import annotations

import time

from schemas import Envelope, Event, Message
from schemas.pool import Owner
from services.scheduler.commands import decide
from services.scheduler.holder import Holder, Knobs
from services.scheduler.moving import resend_unstarted
from services.scheduler.placing import resend_unconfirmed
from services.scheduler.rounds import run_rounds
from services.scheduler.state import evolve
from shared.runtime import Runtime, ServiceDefinition
from shared.settings import Settings


def build(settings: Settings) -> ServiceDefinition:
    priority = Owner(settings.priority)
    name = f"scheduler-{priority.value}"
    knobs = Knobs(
        ha_failures=settings.ha_failures,
        migration_mbps=settings.migration_mbps,
        rebalance_threshold=settings.rebalance_threshold,
    )
    holder = Holder(priority, knobs)
    period = settings.round_seconds

    def fold(seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, seq, env)

    async def on_command(env: Envelope[Message]) -> list[Event]:
        return decide(holder.state, env, name)

    async def setup(runtime: Runtime) -> None:
        await resend_unconfirmed(runtime, holder)
        await resend_unstarted(runtime, holder)

    async def rounds(runtime: Runtime) -> None:
        await run_rounds(runtime, holder, period, high_wait=period / 2)

    return ServiceDefinition(
        name=name,
        fold=fold,
        fold_filters=("host.>", "pool.>", "vm.>", "scheduler.>", "migration.>", "copy.>"),
        follow=True,
        decide=on_command,
        commands={f"{name}-commands": (f"scheduler.{priority.value}.>",)},
        setup=setup,
        loops=[rounds],
        clock=time.time,
    )
