"""``vplane explain VM``: why a VM went where it went, read from the event log."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas import Envelope, Message
from schemas.scheduling import VmPlaced, VmRaised
from schemas.service import CommandRejected, RejectionCode
from schemas.transfers import MigrationAborted, MigrationCompleted
from shared.bus import Bus
from shared.cli.common import BusOption, CliError, JsonOption, with_bus


def explain(
    vm: Annotated[str, typer.Argument(help="VM name.")],
    bus: BusOption = None,
    as_json: JsonOption = False,
) -> None:
    """Why a VM went where it went: the chosen host, the runners-up, what each filter
    removed; then whether it was raised or migrated since."""

    async def read(b: Bus) -> list[Envelope[Message]]:
        return [
            e.envelope
            async for e in b.replay(filters=(f"vm.{vm}",))
            if e.envelope is not None and e.envelope.type in _TOLD
        ]

    events = with_bus(bus, read)
    # A refused second request for the VM says nothing of its placement.
    found = [
        e
        for e in events
        if isinstance(e.data, VmPlaced)
        or (isinstance(e.data, CommandRejected) and e.data.code != RejectionCode.ALREADY_EXISTS)
    ] or [e for e in events if isinstance(e.data, CommandRejected)]
    if not found:
        raise CliError(f"no placement of {vm!r} in the log (was it created with --host?)")
    last = found[-1]
    if as_json:
        typer.echo(last.model_dump_json())
        return
    data = last.data
    if isinstance(data, CommandRejected):
        typer.echo(f"{vm} was not placed: {data.reason} ({data.code})")
        raise typer.Exit(1)
    assert isinstance(data, VmPlaced)
    size = f"{data.cpu} vCPU, {data.mem_mib} MiB" + (" (degraded)" if data.degraded else "")
    typer.echo(f"{vm} -> {data.host} by scheduler-{data.priority} in round {data.round}: {size}")
    typer.echo(f"  score {data.score:.3f}; conflicts with the other scheduler: {data.conflicts}")
    for c in data.runners_up:
        typer.echo(f"  runner-up {c.host}: score {c.score:.3f}")
    removed = ", ".join(f"{k} {v}" for k, v in data.filtered.items())
    typer.echo(f"  hosts removed by filter: {removed or 'none'}")
    for env in events:
        match env.data:
            case VmRaised() as r:
                typer.echo(
                    f"  then raised on {r.host} from {r.from_cpu} vCPU, {r.from_mem_mib} MiB "
                    f"to {r.cpu} vCPU, {r.mem_mib} MiB"
                )
            case MigrationCompleted() as m:
                typer.echo(f"  then migrated {m.source} -> {m.target} ({m.migration})")
            case MigrationAborted() as m:
                typer.echo(f"  a migration to {m.target} aborted: {m.reason} ({m.migration})")


# A placement, and what happened to it since.
_TOLD = {"VmPlaced", "CommandRejected", "VmRaised", "MigrationCompleted", "MigrationAborted"}
