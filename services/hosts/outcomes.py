"""How file copies in flight end, pure: the hosts' loop publishes what ``outcomes`` says.

A live migration is not timed here: the migration coordinator moves its memory in
rounds and says how it ended.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from schemas import Event
from schemas.transfers import CopyAborted, CopyCompleted
from services.hosts.state import Fleet, Transfer, TransferKind


def outcomes(
    fleet: Fleet, hosts: Collection[str], now: datetime, speed: float
) -> list[tuple[Transfer, Event]]:
    """The copies from ``hosts`` that are over at wall time ``now``, with how they ended:
    aborted when an end crashed, else completed once their emulated time has passed."""
    out: list[tuple[Transfer, Event]] = []
    for t in fleet.transfers.values():
        if t.kind != TransferKind.COPY or t.source not in hosts:
            continue
        if t.failed is not None:
            reason = f"host {t.failed} crashed"
            out.append(
                (t, CopyAborted(copy_id=t.id, source=t.source, target=t.target, reason=reason))
            )
        elif (now - t.started_at).total_seconds() * speed >= t.expected_seconds:
            out.append((t, CopyCompleted(copy_id=t.id, source=t.source, target=t.target)))
    return out


def outcome_key(transfer: Transfer, outcome: Event) -> str:
    """The same for every attempt at one transfer's outcome, so the log keeps one: a
    restart that finishes the transfer again is deduplicated."""
    return f"transfer:{transfer.key}/{outcome.type_name()}"
