"""``vplane hosts`` and ``vplane vms``: what a running stack holds, from the hosts' projection."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from schemas.queries import HostList, ListHosts, ListVms, VmList
from shared.cli.common import BusOption, JsonOption, table_console, with_bus
from shared.client import Client

console = table_console()


def hosts(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """List the hosts: capacity, use, contention and memory."""
    reply = with_bus(bus, lambda b: Client(b).query(ListHosts()))
    assert isinstance(reply, HostList)
    if as_json:
        typer.echo(json.dumps([h.model_dump(mode="json") for h in reply.hosts]))
        return
    table = Table(
        "host",
        "state",
        "cores x MHz",
        "NUMA",
        "cpu used/demand",
        "mem reserved",
        "balloon/swap",
        "shared saved",
        "worst slowdown",
        "VMs",
        "datastore",
    )
    for h in reply.hosts:
        capacity = h.cpu_cores * h.cpu_mhz
        table.add_row(
            h.host,
            str(h.state),
            f"{h.cpu_cores} x {h.cpu_mhz}",
            str(h.numa_nodes),
            f"{h.cpu_used_mhz}/{h.cpu_demand_mhz} MHz "
            f"({h.cpu_used_mhz * 100 // max(capacity, 1)}%)",
            f"{h.mem_reserved_mib}/{h.mem_mib} MiB",
            f"{h.mem_balloon_mib:.0f}/{h.mem_swap_mib:.0f} MiB",
            f"{h.mem_shared_saved_mib:.1f} MiB",
            f"{h.worst_slowdown:.2f}",
            str(h.vms),
            f"{h.datastore_used_gib:.2f}/{h.datastore_capacity_gib:.0f} GiB",
        )
    console.print(table)


def vms(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """List the VMs: host, size, state, workload and how much contention slows them."""
    reply = with_bus(bus, lambda b: Client(b).query(ListVms()))
    assert isinstance(reply, VmList)
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in reply.vms]))
        return
    table = Table(
        "vm",
        "host",
        "vCPU",
        "mem MiB",
        "disk GiB",
        "priority",
        "state",
        "workload",
        "memory",
        "slowdown",
        "cpu.ready ms",
    )
    for v in reply.vms:
        table.add_row(
            v.vm,
            v.host,
            str(v.cpu),
            str(v.mem_mib),
            str(v.disk_gib),
            v.priority,
            str(v.state),
            str(v.workload),
            str(v.memory_mode),
            f"{v.slowdown:.2f}",
            f"{v.cpu_ready_ms:.0f}",
        )
    console.print(table)
