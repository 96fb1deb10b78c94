"""What every CLI command shares: finding the bus, running async code, failing in one line."""

from __future__ import annotations

import asyncio
import os
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
