"""Wire a scheduler: ``VPLANE_PRIORITY`` makes it scheduler-high or scheduler-low."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from schemas import Envelope, Message
from schemas.pool import Owner
from services.scheduler.commands import answer_group, decide_outcome
from services.scheduler.failing import check, heard
from services.scheduler.holder import Holder, Knobs
from services.scheduler.rounds import CHECK_SECONDS, Rounds, round_plan
from services.scheduler.state import evolve
from shared.loops import Loop
from shared.outcome import Outcome, Plan
from shared.runtime import ServiceDefinition
from shared.settings import Settings


def build(settings: Settings, wall: Callable[[], float] = time.time) -> ServiceDefinition:
    """``wall``: the clock rounds are paced by and silence is measured on (a scheduler's
    rounds and a host's failure are matters of real time); the events carry the stack's
    emulated time, as every service's do."""
    priority = Owner(settings.priority)
    knobs = Knobs(
        ha_failures=settings.ha_failures,
        migration_mbps=settings.migration_mbps,
        rebalance_threshold=settings.rebalance_threshold,
        failure_ticks=settings.failure_ticks,
        tick_seconds=settings.tick_seconds,
        check_folds=settings.check_folds,
    )
    holder = Holder(priority, knobs)
    name = holder.service
    period = settings.round_seconds

    def fold(seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, seq, env)

    async def on_command(env: Envelope[Message]) -> Outcome:
        return decide_outcome(holder.state, env, name)

    async def on_commands(envs: Sequence[Envelope[Message]]) -> list[Outcome]:
        return answer_group(holder, envs, name)

    rounds = Rounds(period=period, high_wait=period / 2, clock=wall)

    async def round_step() -> Plan:
        return round_plan(holder, rounds)

    async def failure_step() -> list[Outcome]:
        return check(holder, wall())

    # Failure is declared by one party, the high scheduler, which restarts first.
    detects = priority is Owner.HIGH

    return ServiceDefinition(
        name=name,
        fold=fold,
        fold_filters=(
            "host.>",
            "pool.>",
            "vm.>",
            "scheduler.>",
            "migration.>",
            "copy.>",
            "ha.>",
            # Protected VMs and their failovers.
            "ft.>",
            f"outbox.{name}",
        ),
        follow=True,
        decide=on_command,
        decide_group=on_commands,
        commands={f"{name}-commands": (f"scheduler.{priority.value}.>",)},
        observe_telemetry=(lambda env: heard(holder, env)) if detects else None,
        carried=holder if detects else None,
        clock=holder.clock,
        loops=[
            Loop("rounds", round_step, every=CHECK_SECONDS, pause=rounds.pause),
            *([Loop("failures", failure_step, every=settings.tick_seconds)] if detects else []),
        ],
    )
