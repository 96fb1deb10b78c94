"""Small pools and requests for the placement core's tests."""

from __future__ import annotations

from services.scheduler.core import (
    Batch,
    Decision,
    Host,
    HostState,
    PlacedVm,
    Pool,
    Request,
    Resources,
    Rules,
)


def host(
    name: str,
    cpu: float = 10_000.0,
    mem: float = 10_000.0,
    *,
    net: float = 1_000.0,
    storage: float = 1_000.0,
    state: HostState = HostState.USABLE,
) -> Host:
    return Host(name, Resources(cpu, mem, net, storage), state)


def vm(name: str, on: str, cpu: float = 1_000.0, mem: float = 1_000.0, group: str = "") -> PlacedVm:
    return PlacedVm(name, on, Resources(cpu, mem), group)


def ask(
    name: str,
    cpu: float = 1_000.0,
    mem: float = 1_000.0,
    *,
    minimum: tuple[float, float] | None = None,
    group: str = "",
    rules: Rules | None = None,
) -> Request:
    low = None if minimum is None else Resources(*minimum)
    return Request(name, Resources(cpu, mem), low, group, rules or Rules())


def hosts(*names: str, cpu: float = 10_000.0, mem: float = 10_000.0) -> list[Host]:
    return [host(name, cpu, mem) for name in names]


def removed(decision: Decision) -> dict[str, int]:
    return {count.filter.value: count.removed for count in decision.filters}


def cpu_free(pool: Pool, name: str) -> float:
    return pool.free_of(pool.row(name)).cpu_mhz


def apply(pool: Pool, batch: Batch, groups: dict[str, str] | None = None) -> None:
    """Reserve a batch decided on another view (e.g. ``without(spare)``) on ``pool``."""
    for d in batch.decisions:
        if d.row is not None and d.granted is not None:
            pool.add_vm(d.vm, d.row, d.granted.vector(), (groups or {}).get(d.vm, ""))
