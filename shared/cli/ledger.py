"""``vplane ledger``: the reconciliation check. The pool as the log tells it (replayed here,
independently of the schedulers) against what the hosts run."""

from __future__ import annotations

import json

import typer

from schemas.queries import ListVms, VmList
from shared.bus import Bus
from shared.capacity import PoolReplay, differences, pool_from_log
from shared.cli.common import BusOption, JsonOption, with_bus
from shared.client import Client


def ledger(bus: BusOption = None, as_json: JsonOption = False) -> None:
    """Check the capacity ledger against the hosts: every VM reserved where it runs at its
    size, nothing reserved for no VM, no host ever over capacity. Exits 1 on a difference."""

    async def read(b: Bus) -> tuple[PoolReplay, VmList]:
        pool = await pool_from_log(b)
        reply = await Client(b).query(ListVms())
        assert isinstance(reply, VmList)
        return pool, reply

    pool, vms = with_bus(bus, read)
    drift = differences(pool, vms.vms)
    over = [
        f"seq {o.seq}: {o.host} {o.resource} reserved {o.reserved:.0f} of {o.capacity:.0f}"
        for o in pool.over
    ]
    twice = [
        f"seq {t.seq}: {t.host} holds {t.workload} twice ({', '.join(t.reservations)})"
        for t in pool.twice
    ]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "vms": len(vms.vms),
                    "reservations": sum(len(rows) for rows in pool.held.values()),
                    "differences": drift,
                    "over_capacity": over,
                    "counted_twice": twice,
                }
            )
        )
    else:
        for line in [*drift, *over, *twice]:
            typer.echo(line)
        held = sum(len(rows) for rows in pool.held.values())
        verdict = "agree" if not (drift or over or twice) else "DISAGREE"
        typer.echo(
            f"ledger and hosts {verdict}: {len(vms.vms)} VMs, {held} reservations, "
            f"{len(drift)} differences, {len(over)} points over capacity, "
            f"{len(twice)} counted twice"
        )
    if drift or over or twice:
        raise typer.Exit(1)
