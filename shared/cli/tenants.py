"""``vplane cluster …``, ``vplane job …`` and ``vplane clusters``: elastic tenant clusters."""

from __future__ import annotations

import json
import uuid
from typing import Annotated

import typer
from rich.table import Table

from schemas.tenants import ClusterList, CreateCluster, ListClusters, SubmitJob
from shared.cli.commands import TimeoutOption, WaitOption, ready, send, validated
from shared.cli.common import BusOption, CliError, JsonOption, table_console, with_bus
from shared.client import Client

cluster_app = typer.Typer(help="Create elastic tenant clusters.", no_args_is_help=True)
job_app = typer.Typer(help="Run MapReduce jobs on tenant clusters.", no_args_is_help=True)
console = table_console()
Name = Annotated[str, typer.Argument(help="Cluster name: letters, digits, - and _.")]


@cluster_app.command("create")
def cluster_create(
    name: Name,
    workers: Annotated[int, typer.Option("--workers", help="Worker VMs to start with.")],
    minimum: Annotated[int, typer.Option("--min", help="Never fewer workers.")] = 0,
    maximum: Annotated[int | None, typer.Option("--max", help="Never more workers.")] = None,
    priority: Annotated[str, typer.Option("--priority", help="high or low.")] = "low",
    cpu: Annotated[int, typer.Option("--cpu", help="vCPUs per worker.")] = 2,
    mem: Annotated[int, typer.Option("--mem", help="MiB per worker.")] = 4096,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """A tenant cluster: a job tracker and its workers, placed by the scheduler of its
    priority, shrunk by the contention monitor (never below --min) and grown back."""
    if priority not in ("high", "low"):
        raise CliError(f"invalid --priority {priority!r}: use high or low")
    cmd = validated(
        CreateCluster,
        cluster=name,
        workers=workers,
        min_workers=minimum,
        max_workers=workers if maximum is None else maximum,
        priority=priority,
        worker_cpu=cpu,
        worker_mem_mib=mem,
    )
    send(bus, wait, timeout, ready(cmd))


@job_app.command("submit")
def job_submit(
    cluster: Annotated[str, typer.Argument(help="The cluster to run it on.")],
    maps: Annotated[int, typer.Option("--maps", help="Map tasks.")],
    reduces: Annotated[int, typer.Option("--reduces", help="Reduce tasks.")] = 0,
    map_seconds: Annotated[
        float, typer.Option("--map-seconds", help="CPU-seconds each map needs.")
    ] = 10.0,
    reduce_seconds: Annotated[
        float, typer.Option("--reduce-seconds", help="CPU-seconds each reduce needs.")
    ] = 10.0,
    scratch: Annotated[
        float, typer.Option("--scratch", help="MiB each map spills to its host's scratch.")
    ] = 64.0,
    job: Annotated[
        str | None, typer.Option("--name", help="Job name; default: job- and 8 hex digits.")
    ] = None,
    wait: WaitOption = False,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Submit a MapReduce job: its maps, then its reduces, run in the cluster's slots."""
    name = job or f"job-{uuid.uuid4().hex[:8]}"
    cmd = validated(
        SubmitJob,
        cluster=cluster,
        job=name,
        maps=maps,
        reduces=reduces,
        map_cpu_seconds=map_seconds,
        reduce_cpu_seconds=reduce_seconds,
        scratch_mib_per_map=scratch,
    )
    send(bus, wait, timeout, ready(cmd))


def clusters(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """The tenant clusters: size, slots, running jobs and contention on their hosts."""
    reply = with_bus(bus, lambda b: Client(b).query(ListClusters()))
    if not isinstance(reply, ClusterList):
        raise CliError(f"the tenants service answered {reply.type_name()}")
    if as_json:
        typer.echo(json.dumps([c.model_dump(mode="json") for c in reply.clusters]))
        return
    # Short headers: the table must fit an 80-column terminal.
    table = Table("cluster", "prio", "workers", "min..max", "slots m/r", "tasks", "jobs", "done")
    table.add_column("contention")
    for c in reply.clusters:
        # workers: running/asked for; jobs: those running now.
        table.add_row(
            c.cluster,
            str(c.priority),
            f"{c.running}/{c.workers}",
            f"{c.min_workers}..{c.max_workers}",
            f"{c.map_slots}/{c.reduce_slots}",
            str(c.running_tasks),
            ", ".join(c.jobs_running) or "-",
            str(c.jobs_done),
            ", ".join(c.contended_hosts) or "none",
        )
    console.print(table)
