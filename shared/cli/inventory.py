"""``vplane vm ...``, ``vplane hosts`` and ``vplane vms``: drive and inspect a running stack."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from schemas import Envelope, Message
from schemas.queries import HostList, ListHosts, ListVms, VmList
from schemas.service import CommandRejected
from schemas.vm import (
    CreateVm,
    PowerOffVm,
    PowerOnVm,
    Priority,
    VmCreated,
    VmPoweredOff,
    VmPoweredOn,
)
from shared.bus import Bus
from shared.cli.common import BusOption, CliError, JsonOption, with_bus
from shared.client import Client

vm_app = typer.Typer(help="Create and power VMs.", no_args_is_help=True)
console = Console()

WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for the answering event.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait.")]


def _validated(
    build: type[CreateVm] | type[PowerOnVm] | type[PowerOffVm], **fields: object
) -> Message:
    try:
        return build.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CliError(f"invalid {where}: {first['msg']}") from None


def _describe(env: Envelope[Message]) -> str:
    data = env.data
    match data:
        case CommandRejected():
            return f"rejected ({data.code}): {data.reason}"
        case VmPoweredOn() | VmPoweredOff():
            state = "on" if isinstance(data, VmPoweredOn) else "off"
            return f"powered {state} {data.vm} on {data.host}"
        case VmCreated():
            state = "on" if data.powered_on else "off"
            return (
                f"created {data.vm} on {data.host}: {data.cpu} vCPU, {data.mem_mib} MiB, "
                f"{data.priority} priority, {state}"
            )
    return f"{env.type} {data.model_dump_json()}"


def _finish(answers: list[Envelope[Message]]) -> None:
    for env in answers:
        typer.echo(_describe(env))
    if any(isinstance(env.data, CommandRejected) for env in answers):
        raise typer.Exit(1)


@vm_app.command("create")
def vm_create(
    name: Annotated[str, typer.Argument(help="VM name: letters, digits, - and _.")],
    cpu: Annotated[int, typer.Option("--cpu", help="Virtual CPUs.")],
    mem: Annotated[int, typer.Option("--mem", help="Memory in MiB.")],
    priority: Annotated[str, typer.Option("--priority", help="high or low.")] = "low",
    host: Annotated[str | None, typer.Option("--host", help="Place on this host.")] = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Power on once created.")
    ] = True,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Create a VM; the hosts service places it on a host with room."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")
    prio: Priority = "high" if priority == "high" else "low"
    cmd = _validated(
        CreateVm, vm=name, cpu=cpu, mem_mib=mem, priority=prio, host=host, power_on=start
    )
    assert isinstance(cmd, CreateVm)

    async def work(b: Bus) -> list[Envelope[Message]]:
        client = Client(b)
        if wait:
            return await client.send_and_wait(cmd, timeout=timeout)
        env = await client.send(cmd)
        typer.echo(f"sent CreateVm {name} (command {env.id}); --wait shows the answer")
        return []

    _finish(with_bus(bus, work))


def _power(name: str, on: bool, wait: bool, timeout: float, bus: str | None) -> None:
    async def work(b: Bus) -> list[Envelope[Message]]:
        client = Client(b)
        reply = await client.query(ListVms())
        assert isinstance(reply, VmList)
        host = next((v.host for v in reply.vms if v.vm == name), None)
        if host is None:
            raise CliError(f"no VM named {name!r} (see `vplane vms`)")
        cmd = _validated(PowerOnVm if on else PowerOffVm, vm=name, host=host)
        assert isinstance(cmd, PowerOnVm | PowerOffVm)
        if wait:
            return await client.send_and_wait(cmd, timeout=timeout)
        env = await client.send(cmd)
        typer.echo(f"sent {env.type} {name} (command {env.id})")
        return []

    _finish(with_bus(bus, work))


@vm_app.command("start")
def vm_start(
    name: str, wait: WaitOption = False, timeout: TimeoutOption = 10.0, bus: BusOption = None
) -> None:
    """Power a VM on."""
    _power(name, True, wait, timeout, bus)


@vm_app.command("stop")
def vm_stop(
    name: str, wait: WaitOption = False, timeout: TimeoutOption = 10.0, bus: BusOption = None
) -> None:
    """Power a VM off."""
    _power(name, False, wait, timeout, bus)


def hosts(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """List the hosts with their capacity and use."""
    reply = with_bus(bus, lambda b: Client(b).query(ListHosts()))
    assert isinstance(reply, HostList)
    if as_json:
        typer.echo(json.dumps([h.model_dump() for h in reply.hosts]))
        return
    table = Table("host", "cores", "MHz", "mem MiB", "mem used", "cpu demand", "VMs")
    for h in reply.hosts:
        used = f"{h.mem_reserved_mib} ({h.mem_reserved_mib * 100 // max(h.mem_mib, 1)}%)"
        demand = (
            f"{h.cpu_demand_mhz} MHz ({h.cpu_demand_mhz * 100 // max(h.cpu_cores * h.cpu_mhz, 1)}%)"
        )
        table.add_row(
            h.host, str(h.cpu_cores), str(h.cpu_mhz), str(h.mem_mib), used, demand, str(h.vms)
        )
    console.print(table)


def vms(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """List the VMs with their host, size and state."""
    reply = with_bus(bus, lambda b: Client(b).query(ListVms()))
    assert isinstance(reply, VmList)
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in reply.vms]))
        return
    table = Table("vm", "host", "vCPU", "mem MiB", "priority", "state")
    for v in reply.vms:
        table.add_row(v.vm, v.host, str(v.cpu), str(v.mem_mib), v.priority, str(v.state))
    console.print(table)
