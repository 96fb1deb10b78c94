"""``vplane host ...``: inject host failures and bring hosts back."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas.host import CrashHost, RecoverHost
from shared.cli.commands import TimeoutOption, WaitOption, ready, send, validated
from shared.cli.common import BusOption

host_app = typer.Typer(help="Fail hosts and bring them back.", no_args_is_help=True)
Host = Annotated[str, typer.Argument(help="Host name, as `vplane hosts` lists it.")]


@host_app.command("crash")
def host_crash(
    host: Host, wait: WaitOption = False, timeout: TimeoutOption = 10.0, bus: BusOption = None
) -> None:
    """Crash a host: it stops publishing and refuses commands; its VMs power off."""
    cmd = validated(CrashHost, host=host)
    send(bus, wait, timeout, ready(cmd))


@host_app.command("recover")
def host_recover(
    host: Host, wait: WaitOption = False, timeout: TimeoutOption = 10.0, bus: BusOption = None
) -> None:
    """Bring a crashed host back, empty of running VMs."""
    cmd = validated(RecoverHost, host=host)
    send(bus, wait, timeout, ready(cmd))
