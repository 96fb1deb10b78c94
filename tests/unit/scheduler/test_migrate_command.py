"""MigrateVm as its scheduler decides it, on a fold of the log."""

from __future__ import annotations

from schemas import Envelope
from schemas.pool import CapacityReserved, Owner
from schemas.scheduling import (
    MigrateVm,
    MigrationReason,
    MigrationRequested,
    MigrationScheduled,
)
from schemas.service import CommandRejected
from schemas.transfers import MigrationCompleted
from services.scheduler.commands import decide
from services.scheduler.holder import Holder
from tests.unit.scheduler.test_rounds import Log, hosts


def _moved_but_not_settled() -> Holder:
    """``db`` went from h0 to h1; the round that moves its reservation has not run."""
    holder = Holder(Owner.LOW)
    log = Log(holder)
    hosts(holder, log, 2)
    log.append(
        CapacityReserved(
            host="h0", reservation="db", workload="db", owner=Owner.LOW, cpu_mhz=1000, mem_mib=512
        ),
        MigrationRequested(migration="m1", vm="db", priority=Owner.LOW, target="h1"),
        MigrationScheduled(
            migration="m1",
            vm="db",
            source="h0",
            target="h1",
            priority=Owner.LOW,
            round=1,
            reason=MigrationReason.REQUESTED,
            rate_mbps=1000,
            expected_seconds=4,
        ),
        MigrationCompleted(migration="m1", vm="db", source="h0", target="h1"),
    )
    assert holder.state.ledger.held("db").host == "h0"  # type: ignore[union-attr]
    return holder


def _answer(holder: Holder, target: str) -> object:
    cmd = MigrateVm(vm="db", priority=Owner.LOW, target=target)
    [answer] = decide(holder.state, Envelope.wrap(cmd, producer="test"), "scheduler-low")
    return answer


def test_a_vm_just_migrated_may_go_back_before_its_reservation_has_moved() -> None:
    assert isinstance(_answer(_moved_but_not_settled(), "h0"), MigrationRequested)


def test_a_vm_just_migrated_is_already_where_it_went() -> None:
    refused = _answer(_moved_but_not_settled(), "h1")
    assert isinstance(refused, CommandRejected)
    assert refused.reason == "VM db is already on h1"
