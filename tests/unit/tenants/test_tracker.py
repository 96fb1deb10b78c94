"""The job tracker honours slot allocations and moves tasks on by the CPU they get."""

from __future__ import annotations

from schemas.pool import Owner
from schemas.tenants import (
    ClusterCreated,
    ClusterScaled,
    JobSubmitted,
    SlotAllocation,
    SlotsAllocated,
    TaskKind,
    TasksAssigned,
    TasksFinished,
)
from schemas.vm import VmCreated
from services.tenants.state import TaskId, Tenants, evolve
from services.tenants.tracker import Step, advance


def cluster(workers: int = 2, cpu: int = 2) -> Tenants:
    t = evolve(
        Tenants(),
        ClusterCreated(
            cluster="c",
            workers=workers,
            min_workers=0,
            max_workers=10,
            priority=Owner.LOW,
            worker_cpu=cpu,
            worker_mem_mib=1024,
        ),
    )
    added = [f"c-w{i}" for i in range(workers)]
    t = evolve(t, ClusterScaled(cluster="c", from_workers=0, to_workers=workers, added=added))
    for vm in added:
        t = evolve(
            t,
            VmCreated(vm=vm, host="h1", cpu=cpu, mem_mib=1024, priority="low", powered_on=True),
        )
    return t


def job(t: Tenants, maps: int = 6, reduces: int = 2, work: float = 4.0) -> Tenants:
    spec = JobSubmitted(
        cluster="c",
        job="j",
        maps=maps,
        reduces=reduces,
        map_cpu_seconds=work,
        reduce_cpu_seconds=work,
        scratch_mib_per_map=0,
        submitted_sim_time=0,
    )
    return evolve(t, spec)


def apply(t: Tenants, step: Step) -> Tenants:
    for name in step.jobs:
        t = evolve(
            t,
            TasksFinished(
                cluster="c", job=name, done=step.done[name], requeued=step.requeued[name]
            ),
        )
        if step.assigned[name]:
            t = evolve(t, TasksAssigned(cluster="c", job=name, tasks=step.assigned[name]))
    return t


def running_per_vm(t: Tenants) -> dict[tuple[str, TaskKind], int]:
    out: dict[tuple[str, TaskKind], int] = {}
    for tid, vm in t.assigned.items():
        out[(vm, tid[2])] = out.get((vm, tid[2]), 0) + 1
    return out


def test_tasks_go_only_to_allocated_slots_and_reduces_wait_for_maps() -> None:
    t = job(cluster())
    t = evolve(
        t,
        SlotsAllocated(
            cluster="c",
            slots=[
                SlotAllocation(vm="c-w0", map_slots=1, reduce_slots=1),
                SlotAllocation(vm="c-w1", map_slots=0, reduce_slots=1),
            ],
        ),
    )
    progress: dict[TaskId, float] = {}
    rates = {"c-w0": 1.0, "c-w1": 1.0}
    seen_reduce_before_maps = False
    for _ in range(60):
        step = advance(t, "c", progress, rates, dt=1.0)
        t, progress = apply(t, step), step.progress
        busy = running_per_vm(t)
        assert busy.get(("c-w0", TaskKind.MAP), 0) <= 1
        assert busy.get(("c-w1", TaskKind.MAP), 0) == 0
        maps_left = any(tid[2] is TaskKind.MAP for tid in t.assigned)
        if maps_left and any(tid[2] is TaskKind.REDUCE for tid in t.assigned):
            seen_reduce_before_maps = True
        if step.completed:
            break
    assert step.completed
    assert not seen_reduce_before_maps
    # 6 maps of 4 CPU-seconds on one slot, then 2 reduces on two slots: 24 + 4 seconds.
    done = len(t.jobs[("c", "j")].done)
    assert done == 8


def test_a_slot_taken_away_lets_its_task_finish_and_takes_no_other() -> None:
    t = job(cluster(workers=1, cpu=2), maps=4, reduces=0, work=2.0)
    step = advance(t, "c", {}, {"c-w0": 1.0}, dt=1.0)
    t = apply(t, step)
    assert running_per_vm(t)[("c-w0", TaskKind.MAP)] == 2
    t = evolve(
        t,
        SlotsAllocated(cluster="c", slots=[SlotAllocation(vm="c-w0", map_slots=1, reduce_slots=1)]),
    )
    # Both running tasks go on; no new one starts while two run in one slot's place.
    step = advance(t, "c", step.progress, {"c-w0": 1.0}, dt=1.0)
    assert not step.requeued["j"]
    assert not step.assigned["j"]
    assert sorted(step.progress.values()) == [1.0, 1.0]
    t = apply(t, step)
    # They finish; then one slot, one task at a time.
    step = advance(t, "c", step.progress, {"c-w0": 1.0}, dt=1.0)
    assert len(step.done["j"]) == 2
    assert len(step.assigned["j"]) == 1


def test_contention_stretches_tasks_and_a_lost_worker_gives_its_tasks_back() -> None:
    t = job(cluster(workers=1, cpu=1), maps=1, reduces=0, work=4.0)
    step = advance(t, "c", {}, {"c-w0": 1.0}, dt=1.0)
    t, progress = apply(t, step), step.progress
    # Twice as slow: 2 seconds of wall gives 1 CPU-second.
    step = advance(t, "c", progress, {"c-w0": 0.5}, dt=2.0)
    assert list(step.progress.values()) == [1.0]
    t = evolve(t, ClusterScaled(cluster="c", from_workers=1, to_workers=0, removed=["c-w0"]))
    step = advance(t, "c", step.progress, {}, dt=1.0)
    assert [a.vm for a in step.requeued["j"]] == ["c-w0"]
    assert not step.assigned["j"]


def test_a_slowed_worker_shares_what_it_gets_among_its_tasks() -> None:
    """4 vCPUs slowed twofold give 2 vCPUs: 4 tasks get half a CPU each, 2 tasks a whole."""
    for slots, share in ((4, 0.5), (2, 1.0)):
        t = job(cluster(workers=1, cpu=4), maps=8, reduces=0, work=100.0)
        t = evolve(
            t,
            SlotsAllocated(
                cluster="c", slots=[SlotAllocation(vm="c-w0", map_slots=slots, reduce_slots=1)]
            ),
        )
        step = advance(t, "c", {}, {"c-w0": 0.5}, dt=1.0)
        t = apply(t, step)
        step = advance(t, "c", step.progress, {"c-w0": 0.5}, dt=1.0)
        assert sorted(step.progress.values()) == [share] * slots
