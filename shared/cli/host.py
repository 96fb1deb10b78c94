"""``vplane host ...``: inject host failures, bring hosts back, maintenance mode."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas.host import CrashHost, RecoverHost
from schemas.scheduling import MaintainCheapest, SetMaintenance
from shared.cli.commands import TimeoutOption, WaitOption, ready, send, validated
from shared.cli.common import BusOption, CliError

host_app = typer.Typer(
    help="Fail hosts, bring them back, put them in maintenance.", no_args_is_help=True
)
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


@host_app.command("maintenance")
def host_maintenance(
    host: Host,
    mode: Annotated[str, typer.Argument(help="on or off.", metavar="on|off")],
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Maintenance on: the host takes no new work and its VMs are migrated off (see
    `vplane events tail`). Off: it takes work again."""
    if mode not in ("on", "off"):
        raise CliError(f"invalid mode {mode!r}: use on or off")
    cmd = validated(SetMaintenance, host=host, on=mode == "on")
    send(bus, wait, timeout, ready(cmd))


@host_app.command("maintenance-cheapest")
def host_maintenance_cheapest(
    count: Annotated[int, typer.Argument(help="How many hosts.", min=1)] = 1,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Put the COUNT hosts that are cheapest to empty (fewest VMs, then the lightest
    load) in maintenance; refused unless that many can be emptied."""
    send(bus, wait, timeout, ready(validated(MaintainCheapest, count=count)))
