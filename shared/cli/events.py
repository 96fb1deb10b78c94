"""``vplane events tail``: the event log as it grows."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from shared.bus import Bus, Logged, Stream
from shared.cli.common import READER_GONE, BusOption, JsonOption, print_line, with_bus

events_app = typer.Typer(help="Read the event log.", no_args_is_help=True)


def format_entry(entry: Logged) -> str:
    env = entry.envelope
    if env is None:
        return f"{entry.seq:>7}  {'-':<8}  {entry.subject:<28}  UNDECODABLE  {entry.error}"
    data = env.data.model_dump_json()
    return f"{entry.seq:>7}  {env.occurred_at:%H:%M:%S}  {env.subject:<28}  {env.type:<16}  {data}"


def json_entry(entry: Logged) -> str:
    if entry.envelope is None:
        return json.dumps({"seq": entry.seq, "subject": entry.subject, "error": entry.error})
    return json.dumps({"seq": entry.seq, **entry.envelope.model_dump(mode="json")})


@events_app.command("tail")
def tail(
    bus: BusOption = None,
    since: Annotated[
        int | None,
        typer.Option("--since", min=1, help="Start at this log sequence (default: the last 10)."),
    ] = None,
    as_json: JsonOption = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing new events.")
    ] = True,
) -> None:
    """Print the event log from a sequence, then follow it as it grows (Ctrl-C stops)."""
    show = json_entry if as_json else format_entry

    async def work(b: Bus) -> None:
        end = await b.last_seq()
        start = since if since is not None else max(1, end - 9)
        if not follow:
            async for entry in b.replay(from_seq=start):
                typer.echo(show(entry))
            return

        gone = asyncio.Event()

        async def on_entry(entry: Logged) -> None:
            print_line(show(entry), gone)

        await b.watch(Stream.EVENTS, (), on_entry, from_seq=start)
        await gone.wait()
        raise typer.Exit(READER_GONE)

    with_bus(bus, work)
