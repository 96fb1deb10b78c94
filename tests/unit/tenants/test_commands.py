"""Bad requests to the tenants service are refused with a reason and change nothing."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import Envelope, Message
from schemas.service import CommandRejected
from schemas.tenants import AllocateSlots, CreateCluster, ScaleCluster, SlotAllocation, SubmitJob
from services.tenants.commands import decide
from services.tenants.state import Tenants, evolve


def answer(t: Tenants, cmd: Message) -> list[Message]:
    return list(decide(t, Envelope.wrap(cmd, producer="test"), now=0.0))


def refusal(t: Tenants, cmd: Message) -> str:
    [event] = answer(t, cmd)
    assert isinstance(event, CommandRejected), event
    return f"{event.code}: {event.reason}"


def with_cluster() -> Tenants:
    t = Tenants()
    for e in answer(t, CreateCluster(cluster="c", workers=2, min_workers=1, max_workers=3)):
        t = evolve(t, e)
    return t


def test_a_cluster_is_created_with_its_workers_asked_for() -> None:
    created, scaled = answer(Tenants(), CreateCluster(cluster="c", workers=2, max_workers=3))
    assert created.type_name() == "ClusterCreated"
    assert scaled.added == ["c-w0", "c-w1"]  # type: ignore[attr-defined]


def test_bad_requests_are_refused() -> None:
    t = with_cluster()
    assert refusal(
        Tenants(), CreateCluster(cluster="c", workers=2, min_workers=3, max_workers=2)
    ) == ("invalid-request: minimum 3 is above maximum 2")
    assert refusal(t, CreateCluster(cluster="c", workers=1, max_workers=1)).startswith(
        "already-exists"
    )
    assert (
        refusal(t, SubmitJob(cluster="nope", job="j", maps=1)) == "unknown-cluster: no cluster nope"
    )
    assert refusal(t, SubmitJob(cluster="c", job="j", maps=0, reduces=0)) == (
        "invalid-request: a job needs at least one task"
    )
    assert refusal(t, ScaleCluster(cluster="nope", delta=1)).startswith("unknown-cluster")
    stranger = AllocateSlots(
        cluster="c", slots=[SlotAllocation(vm="x", map_slots=1, reduce_slots=1)]
    )
    assert refusal(t, stranger).startswith("unknown-vm")


def test_negative_work_is_not_a_valid_job() -> None:
    with pytest.raises(ValidationError):
        SubmitJob(cluster="c", job="j", maps=1, map_cpu_seconds=-1)
    with pytest.raises(ValidationError):
        SubmitJob(cluster="c", job="j", maps=-1)


def test_shrinking_stops_at_the_minimum() -> None:
    t = with_cluster()
    [scaled] = answer(t, ScaleCluster(cluster="c", delta=-5))
    assert scaled.to_workers == 1  # type: ignore[attr-defined]
    assert len(scaled.removed) == 1  # type: ignore[attr-defined]
    t = evolve(t, scaled)
    assert refusal(t, ScaleCluster(cluster="c", delta=-1)) == (
        "wrong-state: cluster c has 1 workers, at its minimum"
    )


def test_slots_of_a_worker_that_just_left_are_dropped_not_refused() -> None:
    t = with_cluster()
    [shrunk] = answer(t, ScaleCluster(cluster="c", delta=-1))
    t = evolve(t, shrunk)
    gone = shrunk.removed[0]  # type: ignore[attr-defined]
    slots = [SlotAllocation(vm=vm, map_slots=1, reduce_slots=1) for vm in ("c-w0", "c-w1")]
    [allocated] = answer(t, AllocateSlots(cluster="c", slots=slots))
    assert [s.vm for s in allocated.slots] == [v for v in ("c-w0", "c-w1") if v != gone]  # type: ignore[attr-defined]
