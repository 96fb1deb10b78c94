"""``vplane migrations`` and how a migration's end reads: the coordinator's figures."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from schemas import Envelope, Message
from schemas.migration import ListMigrations, MigrationList, MigrationRoundDone
from schemas.scheduling import MigrateVm
from schemas.transfers import MigrationAborted, MigrationCompleted
from shared.bus import Bus
from shared.cli.common import BusOption, JsonOption, table_console, with_bus
from shared.client import Client

ENDS = ("MigrationCompleted", "MigrationAborted", "MigrationRefused", "CommandRejected")

console = table_console()


def migrations(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """List the live migrations in flight and done: rounds, bytes, throttle, downtime."""
    reply = with_bus(bus, lambda b: Client(b).query(ListMigrations()))
    assert isinstance(reply, MigrationList)
    if as_json:
        typer.echo(json.dumps([m.model_dump(mode="json") for m in reply.migrations]))
        return
    table = Table(
        "migration", "vm", "from", "to", "mode", "state", "rounds", "MiB", "throttle",
        "downtime ms", "total s", "checksums",
    )  # fmt: skip
    for m in reply.migrations:
        checks = {True: "equal", False: "DIFFER", None: "-"}[m.checksums_equal]
        table.add_row(
            m.migration,
            m.vm,
            m.source,
            m.target,
            str(m.mode),
            m.state if m.reason is None else f"{m.state}: {m.reason}",
            str(m.rounds),
            f"{m.bytes / 2**20:.1f}",
            f"{m.throttle:.0%}",
            "-" if m.downtime_ms is None else f"{m.downtime_ms:.1f}",
            "-" if m.total_s is None else f"{m.total_s:.2f}",
            checks,
        )
    console.print(table)


def migrate_and_follow(bus: str | None, cmd: MigrateVm, timeout: float) -> Envelope[Message]:
    """Send ``cmd`` and print each round as it is done, until the migration ends (or is
    refused); return how it ended."""

    async def work(b: Bus) -> Envelope[Message]:
        client = Client(b)
        await client.check_target(cmd)
        env = Envelope.wrap(cmd, producer=client.producer)

        def ended(e: Envelope[Message]) -> bool:
            if e.correlation_id != env.id:
                return False
            if isinstance(e.data, MigrationRoundDone):
                typer.echo(describe_round(e.data))
            return e.type in ENDS

        [end] = await client.wait_for(ended, timeout=timeout, before=lambda: b.send(env))
        return end

    return with_bus(bus, work)


def describe_round(done: MigrationRoundDone) -> str:
    r = done.figures
    kind = "live" if r.live else "stopped"
    left = f", {done.pages_left} pages left on the source" if done.pages_left else ""
    faults = f", {done.remote_faults} remote faults" if done.remote_faults else ""
    throttle = f", guest throttled {done.throttle:.0%}" if done.throttle else ""
    return (
        f"  round {r.round} ({kind}): {r.pages} pages ({r.zero_pages} zero, {r.mapped_pages} "
        f"as disk blocks), {r.bytes / 1e6:.1f} MB in {r.duration_s * 1000:.1f} ms; "
        f"{done.dirty_pages_left} dirtied meanwhile{throttle}{left}{faults}"
    )


def describe_end(data: MigrationCompleted | MigrationAborted) -> str:
    if isinstance(data, MigrationAborted):
        lost = " (the VM is lost with its source)" if data.vm_lost else ""
        return (
            f"migration of {data.vm} from {data.source} to {data.target} aborted after "
            f"{data.rounds} rounds: {data.reason}{lost}"
        )
    checks = "checksums equal" if data.checksums_equal else "no memory bytes to compare"
    if data.checksums_equal is False:
        checks = "checksums DIFFER"
    throttle = f", throttled up to {data.max_throttle:.0%}" if data.max_throttle else ""
    faults = ""
    if data.remote_faults:
        faults = (
            f", {data.remote_faults} remote faults, full speed {data.full_speed_s or 0:.2f} s "
            "after the switchover"
        )
    return (
        f"migrated {data.vm} {data.source} -> {data.target} ({data.mode}): {data.rounds} "
        f"rounds, {data.pages} pages ({data.zero_pages} zero, {data.mapped_pages} as disk "
        f"blocks), {data.bytes / 1e6:.1f} MB, "
        f"downtime {data.downtime_ms:.1f} ms, total {data.total_s:.2f} s{throttle}{faults}, "
        f"{checks} ({data.checksum_on_target or '-'})"
    )
