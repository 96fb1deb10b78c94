"""Wire the migration coordinator: it follows the migrations' events in the log and
takes each one's next step on the stack's emulated clock."""

from __future__ import annotations

from schemas import Envelope, Message, Reply
from schemas.migration import ListMigrations, MigrationList, MigrationRoundSent
from schemas.transfers import MigrationAborted, MigrationCompleted
from services.migration.state import Coordinator, evolve
from services.migration.steps import steps
from services.migration.views import migration_views
from shared.bus import PoisonMessage
from shared.loops import Loop
from shared.metrics import MIGRATION_BYTES, MIGRATION_DOWNTIME, MIGRATIONS_ENDED
from shared.outcome import Outcome
from shared.pacing import Pace
from shared.runtime import ServiceDefinition
from shared.settings import Settings

NAME = "migration-coordinator"
# How often the migrations in flight are looked at for a step they can take.
STEP_SECONDS = 0.01


class Holder:
    def __init__(self) -> None:
        self.state = Coordinator()
        # False while rebuilding: what ended before is not counted again.
        self.live = False


def build(settings: Settings) -> ServiceDefinition:
    holder = Holder()
    pace = Pace(settings.speed, settings.tick_seconds * settings.speed)

    def fold(_seq: int, env: Envelope[Message]) -> None:
        holder.state = evolve(holder.state, env)
        if holder.live:
            _count(env.data)

    async def take_steps() -> list[Outcome]:
        now = pace.now(definition.clock.now())
        # What it appends carries the time its rounds ended at.
        definition.clock.saw(now)
        return steps(holder.state, now)

    def observe(env: Envelope[Message]) -> bool:
        pace.sample(env.sim_time)
        return True

    async def query(env: Envelope[Message]) -> Reply:
        if isinstance(env.data, ListMigrations):
            return MigrationList(migrations=migration_views(holder.state))
        raise PoisonMessage(f"the migration coordinator does not answer {env.type}")

    async def setup() -> None:
        holder.live = True

    definition = ServiceDefinition(
        name=NAME,
        fold=fold,
        # Migrations' events (and the pages, runs and stuns of their VMs), the hosts'
        # crashes and refusals, and its own records of the commands it sent.
        fold_filters=("vm.>", "migration.>", "host.>", f"outbox.{NAME}"),
        follow=True,
        # The hosts' telemetry moves the stack's clock, which paces the rounds.
        observe_telemetry=observe,
        queries={"migrations": query},
        setup=setup,
        loops=[Loop("migrations", take_steps, every=STEP_SECONDS)],
    )
    return definition


def _count(event: Message) -> None:
    match event:
        case MigrationCompleted():
            MIGRATIONS_ENDED.labels(outcome="completed", mode=event.mode.value).inc()
            MIGRATION_DOWNTIME.labels(mode=event.mode.value).observe(event.downtime_ms / 1000)
        case MigrationAborted():
            MIGRATIONS_ENDED.labels(outcome="aborted", mode="").inc()
        case MigrationRoundSent():
            live = "true" if event.figures.live else "false"
            MIGRATION_BYTES.labels(live=live).inc(event.figures.bytes)
