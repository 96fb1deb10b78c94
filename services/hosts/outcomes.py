"""How transfers in flight end, pure: the hosts' loop publishes what ``outcomes`` says."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from schemas import Event
from schemas.transfers import CopyAborted, CopyCompleted, MigrationAborted, MigrationCompleted
from services.hosts.state import Fleet, Transfer, TransferKind


def outcomes(
    fleet: Fleet, hosts: Collection[str], now: datetime, speed: float
) -> list[tuple[Transfer, Event]]:
    """The transfers from ``hosts`` that are over at wall time ``now``, with how they ended:
    aborted when an end crashed, else completed once their emulated time has passed."""
    out: list[tuple[Transfer, Event]] = []
    for transfer in fleet.transfers.values():
        if transfer.source not in hosts:
            continue
        if transfer.failed is not None:
            out.append((transfer, _aborted(transfer, f"host {transfer.failed} crashed")))
        elif (now - transfer.started_at).total_seconds() * speed >= transfer.expected_seconds:
            out.append((transfer, _completed(transfer)))
    return out


def _completed(t: Transfer) -> Event:
    if t.kind == TransferKind.COPY:
        return CopyCompleted(copy_id=t.id, source=t.source, target=t.target)
    assert t.vm is not None, "a migration moves a VM"
    return MigrationCompleted(migration=t.id, vm=t.vm, source=t.source, target=t.target)


def _aborted(t: Transfer, reason: str) -> Event:
    if t.kind == TransferKind.COPY:
        return CopyAborted(copy_id=t.id, source=t.source, target=t.target, reason=reason)
    assert t.vm is not None, "a migration moves a VM"
    return MigrationAborted(
        migration=t.id, vm=t.vm, source=t.source, target=t.target, reason=reason
    )


def outcome_key(transfer: Transfer, outcome: Event) -> str:
    """The same for every attempt at one transfer's outcome, so the log keeps one: a
    restart that finishes the transfer again is deduplicated."""
    return f"transfer:{transfer.key}/{outcome.type_name()}"
