"""What every CLI command shares: finding the bus, running async code, failing in one line."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from shared.bus import Bus
from shared.bus.factory import bus_from_url
from shared.settings import Settings

T = TypeVar("T")

DEFAULT_DATA_DIR = Path(".vplane")
URL_FILE = "bus.url"

BusOption = Annotated[
    str | None,
    typer.Option(
        "--bus",
        help="Bus URL (nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/); "
        "default: VPLANE_BUS_URL, "
        "else the stack `vplane up` runs from this directory.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# Piped or redirected (into grep, a file), a table keeps its full width: Rich's default
# of 80 columns cut names short ("after-kill" became "aft…"), and grep missed them.
PIPED_WIDTH = 1000


def table_console() -> Console:
    """The console tables are printed on."""
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


# The exit code of a command whose reader went away (`vplane events tail | head`): the
# one Click gives a command that finds its pipe closed, so that every command agrees.
READER_GONE = 1


def stop_writing() -> None:
    """Whoever read stdout has gone: what is still buffered goes nowhere, so that the
    flush at exit does not fail a second time (as the Python docs advise for SIGPIPE)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_line(text: str, gone: asyncio.Event) -> None:
    """Print one line of a stream that runs until stopped; once its reader has gone,
    set ``gone`` (the stream's owner stops on it) and print nothing more."""
    if gone.is_set():
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stop_writing()
        gone.set()


class CliError(Exception):
    """A problem to report to the user in one line."""


def data_dir() -> Path:
    return Path(os.environ.get("VPLANE_DATA_DIR", DEFAULT_DATA_DIR))


def resolve_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    env = Settings.from_env().bus_url
    if env:
        return env
    url_file = data_dir() / URL_FILE
    if url_file.is_file():
        return url_file.read_text().strip()
    raise CliError(
        "no bus to talk to: pass --bus URL, set VPLANE_BUS_URL, "
        "or start a stack with `vplane up` in this directory"
    )


def with_bus(url: str | None, work: Callable[[Bus], Awaitable[T]]) -> T:
    """Connect to the bus, run ``work``, and always disconnect."""

    async def main() -> T:
        bus = bus_from_url(
            resolve_url(url), Settings.from_env().namespace, client_name="vplane-cli"
        )
        await bus.start()
        try:
            return await work(bus)
        finally:
            await bus.close()

    return asyncio.run(main())
