"""Reserving through the service's runtime: append at the host's pool version, catch up
with that host on a conflict, and choose again."""

from __future__ import annotations

from collections.abc import Callable

from schemas.pool import CapacityReserved
from services.scheduler.holder import Holder
from services.scheduler.ledger import Reserved, reserve, taken_back
from shared.runtime import Runtime


async def reserve_with(
    runtime: Runtime, holder: Holder, pick: Callable[[], CapacityReserved | None]
) -> Reserved:
    async def append_at(reservation: CapacityReserved, version: int) -> None:
        await runtime.append_at(reservation, version)

    async def catch_up(host: str, since: int) -> None:
        await runtime.catch_up((f"pool.{host}",), since)

    async def undo(wanted: CapacityReserved, previous: CapacityReserved | None) -> None:
        await runtime.publish([taken_back(wanted, previous)], caused_by=None)

    return await reserve(
        lambda: holder.state.ledger,
        lambda _: pick(),
        append_at,
        catch_up,
        None if runtime.bus.atomic_versions else undo,
    )
