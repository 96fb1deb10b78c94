"""Sending a command from the CLI: validate it, send it, and print its answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from pydantic import ValidationError

from schemas import Command, Envelope, Message
from schemas.numa import VmNumaMoveCompleted
from schemas.queries import ListVms, VmList, VmView
from schemas.service import CommandRejected
from schemas.sharing import VmTemplated
from schemas.transfers import MigrationAborted, MigrationCompleted
from schemas.vm import VmCreated
from shared.bus import Bus
from shared.cli.common import CliError, with_bus
from shared.cli.migrations import describe_end
from shared.client import Client

C = TypeVar("C", bound=Command)

WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for the answering event.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait.")]


def validated(build: type[C], **fields: object) -> C:
    """A command built from CLI values, or a one-line error naming the bad field."""
    try:
        return build.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid {where}: {first['msg']}") from None


def describe(env: Envelope[Message]) -> str:
    data = env.data
    match data:
        case CommandRejected():
            return f"rejected ({data.code}): {data.reason}"
        case MigrationCompleted() | MigrationAborted():
            return describe_end(data)
        case VmCreated():
            state = "on" if data.powered_on else "off"
            return (
                f"created {data.vm} on {data.host}: {data.cpu} vCPU, {data.mem_mib} MiB, "
                f"{data.priority} priority, {data.workload} workload, {data.memory_mode} "
                f"memory, {state}"
            )
        case VmTemplated():
            return (
                f"{data.vm} on {data.host} is a template now: quiesced and read-only, "
                f"its forks start with checksum {data.checksum}"
            )
        case VmNumaMoveCompleted():
            left = f", {data.pages_left} left (the node is full)" if data.pages_left else ""
            return (
                f"moved {data.vm} on {data.host} to NUMA node {data.node}: "
                f"{data.pages_moved} pages in {data.ticks} ticks{left}, large pages whole "
                f"{data.large_pages_whole_before} before, {data.large_pages_whole_after} after; "
                "local accesses "
                f"{_share(data.local_share_before)} before, {_share(data.local_share_after)} after"
            )
    phrase = _PHRASES.get(data.type_name(), data.type_name())
    fields = data.model_dump(mode="json")
    where = " on ".join(str(fields[k]) for k in ("vm", "host") if k in fields)
    detail = ", ".join(
        f"{k}={v}" for k, v in fields.items() if k not in {"vm", "host"} and v is not None
    )
    return " ".join(part for part in (phrase, where) if part) + (f" ({detail})" if detail else "")


def _share(share: float | None) -> str:
    return "n/a (no accesses)" if share is None else f"{share:.1%}"


_PHRASES = {
    "VmPoweredOn": "powered on",
    "VmPoweredOff": "powered off",
    "VmSuspended": "suspended",
    "VmResumed": "resumed",
    "VmResized": "resized",
    "VmDestroyed": "destroyed",
    "HostCrashed": "crashed",
    "HostRecovered": "recovered",
    "MaintenanceStarted": "maintenance started",
    "MaintenanceEnded": "maintenance ended",
    "MigrationRequested": "migration queued for",
    "MigrationScheduled": "migration scheduled for",
    "MigrationCompleted": "migrated",
    "MigrationAborted": "migration aborted for",
    "MigrationRefused": "migration refused for",
    "ClusterCreated": "cluster created:",
    "ClusterScaled": "cluster scaled:",
    "JobSubmitted": "job submitted:",
    "CheckpointStarted": "checkpoint started of",
    "CheckpointCompleted": "checkpoint saved of",
    "CheckpointFailed": "checkpoint failed of",
    "VmRestored": "restored",
    "CheckpointDeleted": "checkpoint deleted of",
    "ProtectionRequested": "protection requested for",
    "BackupLoaded": "backup loaded for",
    "ProtectionEnded": "protection ended for",
    "DivergenceInjected": "bytes flipped in the backup of",
}


Make = Callable[[Client], Awaitable[Command]]


def ready(cmd: Command) -> Make:
    """A command that needs no question answered before it is sent."""

    async def make(_client: Client) -> Command:
        return cmd

    return make


def send(
    bus: str | None,
    wait: bool,
    timeout: float,
    make: Make,
    *,
    until: str | None = None,
) -> None:
    """Send the command ``make`` builds (it may ask queries first); print the answer.
    With ``until``, wait for that event further down the workflow (or a rejection)."""

    async def work(b: Bus) -> list[Envelope[Message]]:
        client = Client(b)
        cmd = await make(client)
        if wait and until is not None:
            return [await client.send_until(cmd, until, timeout=timeout)]
        if wait:
            return await client.send_and_wait(cmd, timeout=timeout)
        env = await client.send(cmd)
        typer.echo(f"sent {env.type} (command {env.id}); --wait shows the answer")
        return []

    answers = with_bus(bus, work)
    for env in answers:
        typer.echo(describe(env))
    if any(isinstance(env.data, CommandRejected) for env in answers):
        raise typer.Exit(1)


async def host_of(client: Client, vm: str) -> str:
    return (await view_of(client, vm)).host


async def view_of(client: Client, vm: str) -> VmView:
    reply = await client.query(ListVms())
    assert isinstance(reply, VmList)
    view = next((v for v in reply.vms if v.vm == vm), None)
    if view is None:
        raise CliError(f"no VM named {vm!r} (see `vplane vms`)")
    return view
