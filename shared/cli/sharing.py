"""``vplane sharing`` (the page-sharing figures and policy), ``vplane vm fork`` and
``vplane vm tree``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from schemas import Envelope, Message
from schemas.service import CommandRejected
from schemas.sharing import (
    MAX_FORK_CHILDREN,
    ForkVm,
    GetVmTree,
    HostSharing,
    ListSharing,
    SetSharingPolicy,
    SharingReport,
    VmTree,
)
from schemas.vm import VmCreated
from shared.bus import Bus
from shared.cli.commands import TimeoutOption, describe, send, validated
from shared.cli.common import BusOption, CliError, JsonOption, table_console, with_bus
from shared.client import Client

console = table_console()

# What a fork's workflow says: the template made, each child created, or a refusal.
FORK_ANSWERS = frozenset({"VmTemplated", "VmCreated", "CommandRejected"})

sharing_app = typer.Typer(
    help="Page sharing: what the daemon saved, and its read-pattern policy.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@sharing_app.callback()
def sharing(ctx: typer.Context, bus: BusOption = None, as_json: JsonOption = False) -> None:
    """Pages shared and sharing, copies made again, volatile pages, full scans, MiB saved
    and the profit net of the daemon's bookkeeping, per host and for the cluster."""
    if ctx.invoked_subcommand is not None:
        return
    reply = with_bus(bus, lambda b: Client(b).query(ListSharing()))
    assert isinstance(reply, SharingReport)
    if as_json:
        typer.echo(reply.model_dump_json())
        return
    table = Table(
        "host", "shared", "sharing", "unshared again", "volatile", "full scans", "scanned",
        "private copies", "saved MiB", "bookkeeping MiB", "net profit MiB",
    )  # fmt: skip
    for row in [*reply.hosts, reply.cluster]:
        table.add_row(*_cells(row))
    console.print(table)
    p = reply.policy
    state = "on" if p.enabled else "off"
    typer.echo(
        f"scan budget {reply.pages_per_second:g} pages/s per host; read policy {state}: "
        f"{p.reads} reads in {p.window_ticks} ticks or {p.remote_reads} remote reads, "
        f"held {p.hold_s:g} s"
    )


def _cells(row: HostSharing) -> list[str]:
    return [
        row.host,
        str(row.pages_shared),
        str(row.pages_sharing),
        str(row.pages_unshared_again),
        str(row.pages_volatile),
        str(row.full_scans),
        str(row.pages_scanned),
        str(row.private_copies),
        f"{row.saved_mib:.1f}",
        f"{row.bookkeeping_mib:.2f}",
        f"{row.net_profit_mib:.1f}",
    ]


@sharing_app.command("policy")
def policy(
    reads: Annotated[int | None, typer.Option("--reads", help="Reads of a shared page ...")] = None,
    window: Annotated[
        int | None, typer.Option("--window", help="... within so many ticks.")
    ] = None,
    remote_reads: Annotated[
        int | None, typer.Option("--remote-reads", help="Or reads from another node (0: never).")
    ] = None,
    hold: Annotated[
        float | None,
        typer.Option("--hold", help="Emulated seconds a copied page is not shared again."),
    ] = None,
    on: Annotated[
        bool | None, typer.Option("--on/--off", help="Make private copies, or never.")
    ] = None,
    timeout: TimeoutOption = 10.0,
    bus: BusOption = None,
) -> None:
    """Change when a VM's reads of a shared page earn it a private copy on its own node;
    what is not given stays as it is (see `vplane sharing`)."""
    changes = {
        "enabled": on,
        "reads": reads,
        "window_ticks": window,
        "remote_reads": remote_reads,
        "hold_s": hold,
    }

    async def make(client: Client) -> SetSharingPolicy:
        report = await client.query(ListSharing())
        assert isinstance(report, SharingReport)
        rules = report.policy.model_dump()
        rules.update({k: v for k, v in changes.items() if v is not None})
        return validated(SetSharingPolicy, policy=rules)

    send(bus, True, timeout, make)


def fork(
    parent: Annotated[str, typer.Argument(help="The VM to fork; it becomes a template.")],
    child: Annotated[str, typer.Argument(help="The child's name (CHILD-1.. with --count).")],
    count: Annotated[
        int, typer.Option("--count", min=1, max=MAX_FORK_CHILDREN, help="How many children.")
    ] = 1,
    off: Annotated[bool, typer.Option("--off", help="Leave the children powered off.")] = False,
    timeout: TimeoutOption = 30.0,
    bus: BusOption = None,
) -> None:
    """Fork children from a VM: it becomes a template (quiesced, read-only) and each
    child maps its memory copy-on-write, on its host; no page is copied."""
    children = [child] if count == 1 else [f"{child}-{n}" for n in range(1, count + 1)]
    cmd = validated(ForkVm, parent=parent, children=children, power_on=not off)

    async def work(b: Bus) -> list[Envelope[Message]]:
        client = Client(b)
        await client.check_target(cmd)
        env = Envelope.wrap(cmd, producer=client.producer)

        def refused(e: Envelope[Message]) -> bool:
            return isinstance(e.data, CommandRejected) and e.causation_id == env.id

        def enough(found: list[Envelope[Message]]) -> bool:
            ends = [e for e in found if isinstance(e.data, VmCreated | CommandRejected)]
            return any(refused(e) for e in found) or len(ends) >= len(children)

        return await client.wait_for(
            lambda e: e.correlation_id == env.id and e.type in FORK_ANSWERS,
            timeout=timeout,
            before=lambda: b.send(env),
            enough=enough,
        )

    answers = with_bus(bus, work)
    for env in answers:
        typer.echo(describe(env))
    if any(isinstance(env.data, CommandRejected) for env in answers):
        raise typer.Exit(1)


def tree(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """Templates and their forks (forks of forks below them), with each VM's shared and
    private pages."""
    reply = with_bus(bus, lambda b: Client(b).query(GetVmTree()))
    assert isinstance(reply, VmTree)
    if as_json:
        typer.echo(reply.model_dump_json())
        return
    if not reply.nodes:
        raise CliError("no templates or forks yet (see `vplane vm fork --help`)")
    below: dict[str | None, list[str]] = {}
    nodes = {n.vm: n for n in reply.nodes}
    for n in reply.nodes:
        parent = n.parent if n.parent in nodes else None
        below.setdefault(parent, []).append(n.vm)

    def show(vm: str, depth: int) -> None:
        n = nodes[vm]
        role = "template" if n.template else "fork"
        typer.echo(
            f"{'  ' * depth}{vm} ({role} on {n.host}): "
            f"{n.shared_pages} shared pages, {n.private_pages} private"
        )
        for kid in sorted(below.get(vm, [])):
            show(kid, depth + 1)

    for root in sorted(below.get(None, [])):
        show(root, 0)
