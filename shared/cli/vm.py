"""``vplane vm ...``: create VMs and take them through their lifecycle."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas import Command
from schemas.memory import GetVmMemory, VmMemory
from schemas.scheduling import PlaceVm
from schemas.vm import (
    CreateVm,
    DestroyVm,
    MemoryMode,
    PowerOffVm,
    PowerOnVm,
    ResizeVm,
    ResumeVm,
    SuspendVm,
    WorkloadKind,
)
from shared.bus import Bus
from shared.cli.commands import Make, TimeoutOption, WaitOption, host_of, ready, send, validated
from shared.cli.common import BusOption, CliError, JsonOption, with_bus
from shared.client import Client

vm_app = typer.Typer(help="Create VMs and take them through their lifecycle.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="VM name: letters, digits, - and _.")]


def _choice(option: str, value: str, allowed: type[WorkloadKind] | type[MemoryMode]) -> str:
    names = [m.value for m in allowed]
    if value not in names:
        raise CliError(f"invalid {option} {value!r}: use {', '.join(names)}")
    return value


@vm_app.command("create")
def vm_create(
    name: Name,
    cpu: Annotated[int, typer.Option("--cpu", help="Virtual CPUs.")],
    mem: Annotated[int, typer.Option("--mem", help="Memory in MiB.")],
    priority: Annotated[str, typer.Option("--priority", help="high or low.")] = "low",
    host: Annotated[str | None, typer.Option("--host", help="Place on this host.")] = None,
    start: Annotated[
        bool, typer.Option("--start/--no-start", help="Power on once created.")
    ] = True,
    workload: Annotated[
        str, typer.Option("--workload", help="steady, bursty, diurnal, hadoop or noisy.")
    ] = "steady",
    memory: Annotated[
        str, typer.Option("--memory", help="full (real bytes) or accounting (sizes only).")
    ] = "accounting",
    template: Annotated[str, typer.Option("--template", help="Guest OS template.")] = "linux",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds workload and memory.")] = 0,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Create a VM: its priority's scheduler places it (or --host puts it there directly)."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")
    kind = _choice("--workload", workload, WorkloadKind)
    mode = _choice("--memory", memory, MemoryMode)
    if host is not None or not start:
        cmd: Command = validated(
            CreateVm,
            vm=name,
            cpu=cpu,
            mem_mib=mem,
            priority=priority,
            host=host,
            power_on=start,
            workload=kind,
            memory_mode=mode,
            template=template,
            seed=seed,
        )
        send(bus, wait, timeout, ready(cmd))
        return
    cmd = validated(
        PlaceVm,
        vm=name,
        priority=priority,
        cpu=cpu,
        mem_mib=mem,
        workload=kind,
        memory_mode=mode,
        seed=seed,
    )
    send(bus, wait, timeout, ready(cmd), until="VmCreated")


def _on_its_host(name: str, build: type[Command], **fields: object) -> Make:
    """The command, addressed to the host the VM is on (asked of the hosts first)."""

    async def make(client: Client) -> Command:
        return validated(build, vm=name, host=await host_of(client, name), **fields)

    return make


def _lifecycle(command: str, build: type[Command], summary: str) -> None:
    def run(
        name: Name, wait: WaitOption = False, timeout: TimeoutOption = 10.0, bus: BusOption = None
    ) -> None:
        send(bus, wait, timeout, _on_its_host(name, build))

    run.__doc__ = summary
    vm_app.command(command)(run)


_lifecycle("start", PowerOnVm, "Power a VM on.")
_lifecycle("stop", PowerOffVm, "Power a VM off.")
_lifecycle("suspend", SuspendVm, "Suspend a running VM.")
_lifecycle("resume", ResumeVm, "Resume a suspended VM.")
_lifecycle("destroy", DestroyVm, "Destroy a powered-off VM.")


@vm_app.command("resize")
def vm_resize(
    name: Name,
    cpu: Annotated[int | None, typer.Option("--cpu", help="New vCPU count.")] = None,
    mem: Annotated[int | None, typer.Option("--mem", help="New memory in MiB.")] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Change a VM's vCPUs and/or memory, up or down (never below the memory it uses)."""
    if cpu is None and mem is None:
        raise CliError("give --cpu, --mem or both")
    send(bus, wait, timeout, _on_its_host(name, ResizeVm, cpu=cpu, mem_mib=mem))


@vm_app.command("memory")
def vm_memory(name: Name, bus: BusOption = None, as_json: JsonOption = False) -> None:
    """A VM's guest memory: pages, sharing, swap, and its checksum (full-memory VMs)."""

    async def ask(b: Bus) -> VmMemory:
        reply = await Client(b).query(GetVmMemory(vm=name))
        assert isinstance(reply, VmMemory)
        return reply

    mem = with_bus(bus, ask)
    if as_json:
        typer.echo(mem.model_dump_json())
        return
    typer.echo(
        f"{mem.vm} on {mem.host}: {mem.mode} memory, {mem.pages} pages "
        f"({mem.pages * 4 // 1024} MiB), {mem.used_pages} used, {mem.resident_pages} resident, "
        f"{mem.shared_pages} shared, {mem.swapped_pages} swapped"
        + (f", checksum {mem.checksum}" if mem.checksum else "")
    )
