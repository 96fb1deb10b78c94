"""``vplane vm ...``: create VMs and take them through their lifecycle."""

from __future__ import annotations

from typing import Annotated

import typer

from schemas import Command
from schemas.memory import GetVmMemory, VmMemory
from schemas.numa import DEFAULT_PAGES_PER_TICK, MAX_PAGES_PER_TICK, MoveVmNuma, NumaOrder
from schemas.queries import HostList, ListHosts
from schemas.scheduling import ChangeVmSize, MigrateVm, PlacementPolicy, PlaceVm
from schemas.transfers import DEFAULT_DOWNTIME_MS, MigrationCompleted, MigrationMode
from schemas.vm import (
    DEFAULT_DISK_GIB,
    MAX_DISK_GIB,
    DestroyVm,
    MemoryMode,
    PowerOffVm,
    PowerOnVm,
    ResumeVm,
    SuspendVm,
    WorkloadKind,
)
from shared.bus import Bus
from shared.cli.commands import (
    Make,
    TimeoutOption,
    WaitOption,
    describe,
    host_of,
    ready,
    send,
    validated,
    view_of,
)
from shared.cli.common import BusOption, CliError, JsonOption, with_bus
from shared.cli.migrations import migrate_and_follow
from shared.client import Client

vm_app = typer.Typer(help="Create VMs and take them through their lifecycle.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="VM name: letters, digits, - and _.")]


def _choice(
    option: str,
    value: str,
    allowed: type[WorkloadKind] | type[MemoryMode] | type[PlacementPolicy] | type[NumaOrder],
) -> str:
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
    disk: Annotated[
        int,
        typer.Option(
            "--disk",
            min=1,
            max=MAX_DISK_GIB,
            help="Its virtual disk in GiB (thin).",
        ),
    ] = DEFAULT_DISK_GIB,
    dirty_rate: Annotated[
        int | None,
        typer.Option(
            "--dirty-rate",
            help="Page writes per emulated second (full memory); decides whether a live "
            "migration converges.",
        ),
    ] = None,
    hot_fraction: Annotated[
        float,
        typer.Option("--hot-fraction", help="With --dirty-rate: share of pages written most."),
    ] = 0.1,
    packets: Annotated[
        float | None,
        typer.Option(
            "--packets",
            help="Packets from outside per emulated second, on average (full memory): the guest is "
            "driven by inputs its host draws from the OS, and its execution can be "
            "recorded (vplane ft protect).",
        ),
    ] = None,
    min_cpu: Annotated[
        int | None, typer.Option("--min-cpu", help="Accept this few vCPUs if need be.")
    ] = None,
    min_mem: Annotated[
        int | None, typer.Option("--min-mem", help="Accept this little MiB if need be.")
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", help="balanced, binpack or spread.")
    ] = "balanced",
    group: Annotated[str, typer.Option("--group", help="Spread group.")] = "",
    near: Annotated[
        list[str] | None, typer.Option("--near", help="On the same host as this VM (repeat).")
    ] = None,
    apart: Annotated[
        list[str] | None, typer.Option("--apart", help="Not on this VM's host (repeat).")
    ] = None,
    on_host: Annotated[
        list[str] | None, typer.Option("--on-host", help="Only on these hosts (repeat).")
    ] = None,
    not_on_host: Annotated[
        list[str] | None, typer.Option("--not-on-host", help="Never on this host (repeat).")
    ] = None,
    soft: Annotated[
        bool, typer.Option("--soft", help="The rules above are preferences, not musts.")
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Create a VM: its priority's scheduler reserves room for it and places it (on --host,
    if given), then that host creates it."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")
    kind = _choice("--workload", workload, WorkloadKind)
    mode = _choice("--memory", memory, MemoryMode)
    how = _choice("--policy", policy, PlacementPolicy)
    strength = "should" if soft else "must"
    rules = {
        rule: {strength: names}
        for rule, names in (
            ("vm_affinity", near),
            ("vm_anti_affinity", apart),
            ("host_affinity", on_host),
            ("host_anti_affinity", not_on_host),
        )
        if names
    }
    if host is not None:
        if on_host or not_on_host:
            raise CliError("--host names the host: drop --on-host/--not-on-host")
        # Through the scheduler all the same: the room is reserved in the ledger first.
        rules["host_affinity"] = {"must": [host]}
    cmd = validated(
        PlaceVm,
        vm=name,
        priority=priority,
        cpu=cpu,
        mem_mib=mem,
        workload=kind,
        memory_mode=mode,
        seed=seed,
        min_cpu=min_cpu,
        min_mem_mib=min_mem,
        policy=how,
        group=group,
        rules=rules,
        template=template,
        power_on=start,
        disk_gib=disk,
        writes=None
        if dirty_rate is None
        else {"pages_per_s": dirty_rate, "hot_fraction": hot_fraction},
        inputs=None if packets is None else {"packets_per_s": packets},
    )
    send(bus, wait, timeout, ready(cmd), until="VmCreated")


@vm_app.command("migrate")
def vm_migrate(
    name: Name,
    to: Annotated[
        str | None, typer.Option("--to", help="Target host; default: the best host.")
    ] = None,
    priority: Annotated[str, typer.Option("--priority", help="high or low.")] = "low",
    mode: Annotated[
        str, typer.Option("--mode", help="precopy (default), postcopy or hybrid.")
    ] = "precopy",
    downtime_ms: Annotated[
        int, typer.Option("--downtime-ms", help="Longest stop the switchover may take.")
    ] = DEFAULT_DOWNTIME_MS,
    wait: WaitOption = False,
    timeout: TimeoutOption = 30.0,
    bus: BusOption = None,
) -> None:
    """Live-migrate a VM: its scheduler reserves room and bandwidth, the migration
    coordinator moves its memory in rounds; --wait prints the rounds, bytes, downtime
    and the checksums compared at the end."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")
    if mode not in set(MigrationMode):
        raise CliError(f"invalid --mode {mode!r}: use precopy, postcopy or hybrid")
    cmd = validated(
        MigrateVm, vm=name, priority=priority, target=to, mode=mode, downtime_ms=downtime_ms
    )
    if not wait:
        send(bus, wait, timeout, ready(cmd))
        return
    end = migrate_and_follow(bus, cmd, timeout)
    typer.echo(describe(end))
    if not isinstance(end.data, MigrationCompleted):
        raise typer.Exit(1)


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
    """Change a VM's vCPUs and/or memory, up or down (never below the memory it uses): its
    scheduler reserves the room for a bigger size first."""
    if cpu is None and mem is None:
        raise CliError("give --cpu, --mem or both")

    async def make(client: Client) -> Command:
        view = await view_of(client, name)
        return validated(ChangeVmSize, vm=name, priority=view.priority, cpu=cpu, mem_mib=mem)

    send(bus, wait, timeout, make, until="VmResized")


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
        f"{mem.shared_pages} shared, {mem.swapped_pages} swapped, "
        f"{mem.mapped_pages} holding disk blocks"
        + (f", checksum {mem.checksum}" if mem.checksum else "")
    )


@vm_app.command("numa-move")
def vm_numa_move(
    name: Name,
    node: Annotated[int, typer.Option("--node", min=0, help="The NUMA node to move it to.")],
    order: Annotated[
        str, typer.Option("--order", help="hot-first (most used pages first) or sequential.")
    ] = "hot-first",
    pages_per_tick: Annotated[
        int,
        typer.Option(
            "--pages-per-tick", min=1, max=MAX_PAGES_PER_TICK, help="4 KiB pages moved a tick."
        ),
    ] = DEFAULT_PAGES_PER_TICK,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    bus: BusOption = None,
) -> None:
    """Move a VM to another NUMA node of its host: its vCPUs at once, then its memory over
    the following ticks; with --wait, how local its memory accesses were before and after."""
    how = _choice("--order", order, NumaOrder)

    async def make(client: Client) -> Command:
        host = await host_of(client, name)
        hosts = await client.query(ListHosts())
        assert isinstance(hosts, HostList)
        nodes = next((h.numa_nodes for h in hosts.hosts if h.host == host), None)
        if nodes is not None and node >= nodes:
            raise CliError(f"host {host} has NUMA nodes 0..{nodes - 1}: there is no node {node}")
        return validated(
            MoveVmNuma, vm=name, host=host, node=node, order=how, pages_per_tick=pages_per_tick
        )

    send(bus, wait, timeout, make, until="VmNumaMoveCompleted")
