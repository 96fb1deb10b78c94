"""Wire the FT service: it takes ProtectVm, follows its pairs' events in the log (its
own, the hosts' answers, the schedulers' refusals) and takes each pair's next step on the
stack's emulated clock."""

from __future__ import annotations

import asyncio

from schemas import Envelope, Message, Reply
from schemas.ft import DivergeBackup, FtStatus, GetFtStatus, PairSynced, ProtectVm, UnprotectVm
from services.ft.protect import diverge, protect, unprotect
from services.ft.state import Ft, evolve
from services.ft.steps import steps
from services.ft.views import status
from shared.bus import PoisonMessage
from shared.loops import Loop
from shared.metrics import FT_OUTPUTS_RELEASED, FT_SYNC_POINTS
from shared.outcome import Outcome
from shared.pacing import Pace
from shared.runtime import ServiceDefinition
from shared.settings import Settings

NAME = "ft"
# How often the pairs are looked at for a step they can take (the emulated clock's
# moving on); an event folded wakes them at once.
STEP_SECONDS = 0.01


class Holder:
    def __init__(self) -> None:
        self.state = Ft()
        # False while rebuilding: what happened before is not counted again.
        self.live = False


def build(settings: Settings) -> ServiceDefinition:
    holder = Holder()
    pace = Pace(settings.speed, settings.tick_seconds * settings.speed)
    wake = asyncio.Event()

    def fold(_seq: int, env: Envelope[Message]) -> None:
        before = holder.state
        holder.state = evolve(before, env)
        if holder.state is not before:
            wake.set()
        if holder.live and isinstance(env.data, PairSynced):
            FT_SYNC_POINTS.labels(mode=env.data.mode.value, equal=str(env.data.equal)).inc()
            FT_OUTPUTS_RELEASED.inc(len(env.data.released))

    async def on_command(env: Envelope[Message]) -> Outcome:
        if isinstance(env.data, ProtectVm):
            return protect(holder.state, env)
        if isinstance(env.data, DivergeBackup):
            return diverge(holder.state, env)
        if isinstance(env.data, UnprotectVm):
            return unprotect(holder.state, env)
        raise PoisonMessage(f"the FT service does not handle {env.type}")

    async def take_steps() -> list[Outcome]:
        now = pace.now(definition.clock.now())
        definition.clock.saw(now)
        return steps(holder.state, now)

    def observe(env: Envelope[Message]) -> bool:
        pace.sample(env.sim_time)
        return True

    async def query(env: Envelope[Message]) -> Reply:
        if isinstance(env.data, GetFtStatus):
            return FtStatus(pairs=status(holder.state))
        raise PoisonMessage(f"the FT service does not answer {env.type}")

    async def setup() -> None:
        holder.live = True

    definition = ServiceDefinition(
        name=NAME,
        fold=fold,
        # Its pairs' events and the VMs and hosts they run on; the hosts' answers (pages,
        # runs, stuns), the schedulers' refusals of a backup, its own command records.
        fold_filters=("ft.>", "vm.>", "host.>", "ha.>", "scheduler.>", f"outbox.{NAME}"),
        follow=True,
        decide=on_command,
        commands={"ft-commands": ("ft.>",)},
        # The hosts' telemetry moves the stack's clock, which paces the primaries' epochs.
        observe_telemetry=observe,
        queries={"ft": query},
        setup=setup,
        loops=[Loop("pairs", take_steps, every=STEP_SECONDS, wake=wake)],
    )
    return definition
