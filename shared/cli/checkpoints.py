"""``vplane vm checkpoint``, ``restore``, ``checkpoints`` and ``checkpoint-delete``."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table

from schemas import Command
from schemas.checkpoints import (
    CheckpointList,
    CheckpointView,
    CheckpointVm,
    DeleteCheckpoint,
    ListCheckpoints,
    RestoreVm,
)
from schemas.scheduling import PlaceVm
from shared.bus import Bus
from shared.cli.commands import TimeoutOption, WaitOption, host_of, send, validated
from shared.cli.common import BusOption, CliError, JsonOption, table_console, with_bus
from shared.client import Client

console = table_console()
VmName = Annotated[str, typer.Argument(help="VM name.")]
CheckpointName = Annotated[str, typer.Argument(help="Checkpoint name.")]


def checkpoint(
    name: VmName,
    as_name: Annotated[
        str | None,
        typer.Option("--name", help="The checkpoint's name; default: <vm>-<UTC time>."),
    ] = None,
    copy_parent: Annotated[
        bool,
        typer.Option(
            "--copy-parent/--keep-parent",
            help="Copy the disk into the checkpoint and give the VM its own disk back, or keep "
            "the disk, frozen, as the checkpoint's (the VM goes on in a child of it).",
        ),
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 120.0,
    bus: BusOption = None,
) -> None:
    """Checkpoint a running VM: it stops only to switch to a copy-on-write disk and mark its
    memory copy-on-write; its memory is saved in the background (--wait: until saved)."""
    label = as_name or f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"

    async def make(client: Client) -> Command:
        host = await host_of(client, name)
        return validated(
            CheckpointVm, vm=name, host=host, checkpoint=label, copy_parent=copy_parent
        )

    send(bus, wait, timeout, make, until="CheckpointCompleted")


def restore(
    name: VmName,
    checkpoint_name: CheckpointName,
    as_new: Annotated[
        str | None,
        typer.Option(
            "--as", help="Make a new VM of this name from the checkpoint, placed by a scheduler."
        ),
    ] = None,
    priority: Annotated[str, typer.Option("--priority", help="With --as: high or low.")] = "low",
    wait: WaitOption = False,
    timeout: TimeoutOption = 120.0,
    bus: BusOption = None,
) -> None:
    """Bring a powered-off VM back to a checkpoint: memory, devices and disk as they were
    (or, with --as, make a new VM from it, powered off)."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")

    async def make(client: Client) -> Command:
        if as_new is None:
            host = await host_of(client, name)
            return validated(RestoreVm, vm=name, host=host, checkpoint=checkpoint_name)
        saved = await _checkpoint(client, checkpoint_name)
        if saved.vm != name:
            raise CliError(f"checkpoint {checkpoint_name!r} is of VM {saved.vm}, not {name}")
        return validated(
            PlaceVm,
            vm=as_new,
            priority=priority,
            cpu=saved.cpu,
            mem_mib=saved.mem_mib,
            memory_mode="full",
            disk_gib=saved.disk_gib,
            checkpoint=checkpoint_name,
            # Off, as a VM restored in place is: started when its user says.
            power_on=False,
        )

    send(bus, wait, timeout, make, until="VmCreated" if as_new else None)


def checkpoints(
    name: Annotated[str | None, typer.Argument(help="Only this VM's.")] = None,
    bus: BusOption = None,
    as_json: JsonOption = False,
) -> None:
    """List checkpoints: state, size, stun time and checksums."""
    found = _checkpoints(bus, name)
    if as_json:
        typer.echo(json.dumps([c.model_dump(mode="json") for c in found]))
        return
    table = Table("checkpoint", "vm", "state", "size", "stun ms", "disk", "checksum")
    for c in found:
        table.add_row(
            c.checkpoint,
            c.vm,
            c.state + (f": {c.reason}" if c.reason else ""),
            f"{c.bytes / 2**20:.1f} MiB" if c.bytes else "",
            f"{c.stun_ms:.2f}" if c.stun_ms is not None else "",
            c.disk,
            c.checksum or "",
        )
    console.print(table)


def checkpoint_delete(
    checkpoint_name: CheckpointName,
    wait: WaitOption = False,
    timeout: TimeoutOption = 60.0,
    bus: BusOption = None,
) -> None:
    """Delete a checkpoint; its VM's disk is merged back into the checkpoint's."""

    async def make(client: Client) -> Command:
        found = await _checkpoint(client, checkpoint_name)
        host = await host_of(client, found.vm)
        return validated(DeleteCheckpoint, checkpoint=checkpoint_name, host=host)

    send(bus, wait, timeout, make)


async def _checkpoint(client: Client, name: str) -> CheckpointView:
    reply = await client.query(ListCheckpoints())
    assert isinstance(reply, CheckpointList)
    found = next((c for c in reply.checkpoints if c.checkpoint == name), None)
    if found is None:
        raise CliError(f"no checkpoint named {name!r} (see `vplane vm checkpoints`)")
    return found


def _checkpoints(bus: str | None, vm: str | None) -> list[CheckpointView]:
    async def ask(b: Bus) -> list[CheckpointView]:
        reply = await Client(b).query(ListCheckpoints(vm=vm))
        assert isinstance(reply, CheckpointList)
        return reply.checkpoints

    return with_bus(bus, ask)
