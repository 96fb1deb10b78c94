"""``vplane ft``: protect a VM with a backup on another host, and see how each pair
stands."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from schemas.ft import (
    DEFAULT_EPOCH_MS,
    DivergeBackup,
    FtMode,
    FtStatus,
    GetFtStatus,
    ProtectVm,
    UnprotectVm,
)
from shared.cli.commands import TimeoutOption, WaitOption, ready, send, validated
from shared.cli.common import BusOption, CliError, JsonOption, table_console, with_bus
from shared.client import Client

console = table_console()

ft_app = typer.Typer(
    help="Fault tolerance: a protected VM goes on, on its backup, when its host dies.",
    no_args_is_help=True,
)


@ft_app.command("protect")
def ft_protect(
    vm: Annotated[str, typer.Argument(help="The VM to protect (full memory, --packets).")],
    mode: Annotated[
        str, typer.Option("--mode", help="record-replay, checkpoint or lockstep.")
    ] = FtMode.RECORD_REPLAY.value,
    backup_host: Annotated[
        str | None,
        typer.Option("--backup-host", help="Put the backup there (never the VM's own host)."),
    ] = None,
    epoch_ms: Annotated[
        int, typer.Option("--epoch-ms", help="Emulated ms between sync points.")
    ] = DEFAULT_EPOCH_MS,
    wait: WaitOption = False,
    timeout: TimeoutOption = 30.0,
    bus: BusOption = None,
) -> None:
    """Protect a VM: its scheduler places a backup of its size on another host, the FT
    service copies the VM's state into it, then keeps it in step; with --wait, until the
    backup holds the VM's state."""
    modes = [m.value for m in FtMode]
    if mode not in modes:
        raise CliError(f"invalid --mode {mode!r}: use {', '.join(modes)}")
    cmd = validated(ProtectVm, vm=vm, mode=mode, backup_host=backup_host, epoch_ms=epoch_ms)
    send(bus, wait, timeout, ready(cmd), until="BackupLoaded")


@ft_app.command("unprotect")
def ft_unprotect(
    vm: Annotated[str, typer.Argument(help="A protected VM.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """End a VM's protection: the outputs its backup had not confirmed leave, its backup
    is destroyed and its room given back; the VM runs on, unprotected."""
    send(bus, wait, timeout, ready(validated(UnprotectVm, vm=vm)), until="ProtectionEnded")


@ft_app.command("status")
def ft_status(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """Each pair: mode, hosts, log lag, sync points, bytes, held and released outputs,
    divergences, failovers."""
    reply = with_bus(bus, lambda b: Client(b).query(GetFtStatus()))
    assert isinstance(reply, FtStatus)
    if as_json:
        typer.echo(reply.model_dump_json())
        return
    if not reply.pairs:
        raise CliError("no protected VMs yet (see `vplane ft protect --help`)")
    table = Table(
        "vm", "mode", "phase", "primary", "backup", "backup host", "log lag", "synced",
        "bytes", "held", "released", "divergences", "failovers",
    )  # fmt: skip
    for p in reply.pairs:
        table.add_row(
            p.vm, p.mode.value, p.phase, p.primary_host, p.backup, p.backup_host or "-",
            str(p.log_lag), str(p.entries), str(p.bytes), str(p.held_outputs),
            str(p.released_outputs), str(p.divergences), str(p.failovers),
        )  # fmt: skip
    console.print(table)


@ft_app.command("diverge")
def ft_diverge(
    vm: Annotated[str, typer.Argument(help="A protected VM whose backup is in step.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Fault injection: flip bytes of the VM's backup, so that it says otherwise than the
    VM from its next output; the FT service notices, holds the outputs, and copies the
    VM's state into the backup again (see `vplane events tail`, `vplane ft status`)."""
    send(bus, wait, timeout, ready(validated(DivergeBackup, vm=vm)))
