"""The hosts service's I/O edges: telemetry ticks, transfer outcomes and query answers."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import structlog

from schemas import Envelope, Message, Reply
from schemas.checkpoints import CheckpointList, ListCheckpoints
from schemas.host import ClockLeased, HostTelemetry
from schemas.memory import GetVmMemory, VmMemory
from schemas.queries import HostList, HostView, ListHosts, ListVms, VmList, VmView
from schemas.sharing import GetPageDigests, GetVmTree
from schemas.vm import MemoryMode
from services.hosts import page_sharing
from services.hosts.disks import Disks
from services.hosts.machine import Machine
from services.hosts.outcomes import outcome_key, outcomes
from services.hosts.state import Fleet
from shared.bus import PoisonMessage
from shared.capacity import Difference, Room, Runs, disagreements
from shared.clock import StackClock
from shared.metrics import GUEST_MEMORY_DIVERGENCES, LEDGER_DIFFERENCES
from shared.outcome import Outcome

log = structlog.get_logger("vplane.hosts")

# Per-page digests travel in the reply envelope, which stays under the codec's size limit.
MAX_DIGESTS = 8_192
# How late past its emulated end a transfer may be reported, in wall seconds.
TRANSFER_CHECK_SECONDS = 0.05
# Ticks leased in the log at a time (ClockLeased): one event per this many ticks.
LEASE_TICKS = 60
# Ticks between two reconciliations of the ledger with what the hosts run.
RECONCILE_TICKS = 10


class FleetHolder:
    """The mutable cells: the current fold of the hosts' events, and the hardware."""

    def __init__(
        self, hosts: list[str], disks: Disks | None = None, tick_seconds: float = 1.0
    ) -> None:
        self.fleet = Fleet()
        self.machine = Machine(hosts, disks, tick_seconds)
        self.tick = 0
        self.samples: dict[str, HostTelemetry] = {}
        # The stack's emulated time as this process knows it; and how far the hosts'
        # ticks are leased in the log (a restart goes on after that).
        self.clock = StackClock()
        self.leased_until = 0.0
        # Log sequences of events whose divergence from guest memory is logged already.
        self.divergences_logged: set[int] = set()
        # What the last reconciliation found: a disagreement counts once it outlasts one.
        self.disagreeing: set[Difference] = set()
        self.lasting: set[Difference] = set()

    def sim_time(self, step: float) -> float:
        """The emulated time of the current tick."""
        return self.tick * step

    def resume(self, step: float) -> None:
        """Go on from the emulated time the log has reached (the latest lease, or a later
        time seen there): a restarted process's clock never goes back, nor repeats a tick
        its telemetry may have carried before."""
        reached = max(self.leased_until, self.clock.now())
        self.tick = max(self.tick, math.ceil(reached / step - 1e-9))


def divergences(holder: FleetHolder) -> list[Outcome]:
    """Each event the guest memory could not follow, logged once, however many rebuilds
    meet it."""
    found, holder.machine.diverged = holder.machine.diverged, []
    for d in found:
        if d.event_seq not in holder.divergences_logged:
            GUEST_MEMORY_DIVERGENCES.labels(host=d.host).inc()
    return [
        Outcome(events=[d], key=f"diverged:{d.event_seq}")
        for d in found
        if d.event_seq not in holder.divergences_logged
    ]


def numa_reports(holder: FleetHolder, step: float) -> list[Outcome]:
    """What the NUMA moves reported on the tick just run, one outcome per move, in the
    workflow of the command that started it (a tick is never run twice, so neither is
    its report)."""
    return [
        Outcome(
            events=[progress] if completed is None else [progress, completed],
            cause=holder.fleet.numa_moves.get(progress.vm),
            key=f"numa:{progress.host}:{progress.vm}:{progress.tick}",
            sim_time=progress.tick * step,
        )
        for progress, completed in holder.machine.numa.drain()
    ]


def telemetry_step(holder: FleetHolder, step: float) -> Outcome:
    """Every live host's sample for this tick. Emulated time advances by ``step`` a
    tick, whatever the wall clock did, so the same seeds give the same telemetry."""
    sim_time = holder.sim_time(step)
    holder.clock.saw(sim_time)
    lease: list[ClockLeased] = []
    if sim_time >= holder.leased_until:
        # Lands before this tick's samples go out, or they do not go out.
        lease.append(
            ClockLeased(until_sim_time=(holder.tick + LEASE_TICKS) * step, tick=holder.tick)
        )
    if holder.tick % RECONCILE_TICKS == 0:
        reconcile(holder)
    samples = list(holder.machine.tick(holder.fleet, holder.tick, sim_time, step))
    for data in samples:
        holder.samples[data.host] = data
    key = f"lease:{holder.machine.hosts[0] if holder.machine.hosts else ''}:{holder.tick}"
    holder.tick += 1
    return Outcome(events=lease, samples=samples, sim_time=sim_time, key=key)


def ledger_disagreements(holder: FleetHolder) -> set[Difference]:
    """Where the ledger and this process's hosts disagree now."""
    fleet, mine = holder.fleet, set(holder.machine.hosts)
    # A post-copy VM runs on its target before its reservation moves there (at the end):
    # the migration's own reservation on the target holds its room meanwhile.
    crossing = {t.vm for t in fleet.transfers.values() if t.switched}
    held = {
        name: Room(host, r.cpu_mhz, r.mem_mib)
        for host, rows in fleet.reserved.items()
        for name, r in rows.items()
        if r.purpose == "vm" and name not in crossing
    }
    runs = [
        Runs(v.name, v.host, v.cpu, v.mem_mib)
        for v in fleet.vms.values()
        if v.host in mine and v.name not in crossing
    ]
    return {d for d in disagreements(held, runs) if d.host in mine}


def reconcile(holder: FleetHolder) -> None:
    """The ledger-differences metric: disagreements seen by two reconciliations in a row
    (one that comes and goes is a placement or a release on its way)."""
    now = ledger_disagreements(holder)
    lasting, before = now & holder.disagreeing, holder.lasting
    holder.disagreeing, holder.lasting = now, lasting
    for host in holder.machine.hosts:
        LEDGER_DIFFERENCES.labels(host=host).set(sum(d.host == host for d in lasting))
    for d in sorted(lasting - before, key=str):
        log.warning("the ledger and a host disagree", host=d.host, difference=str(d))


def transfer_step(holder: FleetHolder, speed: float) -> list[Outcome]:
    """How each transfer from this process's hosts ended, once it has.

    Its clock is the Started event's wall time, so after a restart the rebuilt fold
    finishes what was in flight; an outcome is keyed by its transfer, so a transfer
    never ends twice."""
    hosts = set(holder.machine.hosts)
    return [
        Outcome(events=[outcome], cause=transfer.cause, key=outcome_key(transfer, outcome))
        for transfer, outcome in outcomes(holder.fleet, hosts, datetime.now(UTC), speed)
    ]


async def answer_query(holder: FleetHolder, env: Envelope[Message]) -> Reply:
    fleet = holder.fleet
    match env.data:
        case ListHosts():
            return HostList(hosts=[_host_view(holder, name) for name in sorted(fleet.hosts)])
        case ListVms():
            contention = holder.machine.contention
            return VmList(
                vms=[
                    VmView(
                        vm=v.name,
                        host=v.host,
                        cpu=v.cpu,
                        mem_mib=v.mem_mib,
                        priority=v.priority,
                        state=v.state,
                        workload=v.workload,
                        memory_mode=v.memory_mode,
                        slowdown=round(contention.slowdown(v.name), 3),
                        cpu_ready_ms=round(contention.cpu_ready_ms(v.name), 1),
                        disk_gib=v.disk_gib,
                    )
                    for v in sorted(fleet.vms.values(), key=lambda v: v.name)
                ]
            )
        case GetVmMemory():
            return _vm_memory(holder, env.data)
        case GetPageDigests():
            mem = holder.machine.memory.get(env.data.host)
            return page_sharing.digests(fleet, mem, env.data)
        case GetVmTree():
            return page_sharing.vm_tree(fleet, holder.machine.memory)
        case ListCheckpoints():
            vm = env.data.vm
            return CheckpointList(
                checkpoints=[
                    c.view()
                    for _, c in sorted(fleet.checkpoints.items())
                    if vm is None or c.vm == vm
                ]
            )
    raise PoisonMessage(f"the hosts service does not answer {env.type}")


def _host_view(holder: FleetHolder, name: str) -> HostView:
    fleet = holder.fleet
    h = fleet.hosts[name]
    s = holder.samples.get(name)
    return HostView(
        host=name,
        state=h.shown_state,
        cpu_cores=h.spec.cpu_cores,
        cpu_mhz=h.spec.cpu_mhz,
        mem_mib=h.spec.mem_mib,
        numa_nodes=h.spec.numa_nodes,
        mem_reserved_mib=fleet.mem_reserved(name),
        cpu_demand_mhz=s.cpu_demand_mhz if s else 0,
        cpu_used_mhz=s.cpu_used_mhz if s else 0,
        mem_active_mib=s.mem_active_mib if s else 0,
        mem_balloon_mib=s.mem_balloon_mib if s else 0,
        mem_swap_mib=s.mem_swap_mib if s else 0,
        mem_shared_saved_mib=s.mem_shared_saved_mib if s else 0,
        worst_slowdown=max((v.slowdown for v in s.vms), default=1.0) if s else 1.0,
        vms=len(fleet.vms_on(name)),
        datastore_capacity_gib=s.datastore_capacity_gib if s else 0,
        datastore_used_gib=s.datastore_used_gib if s else 0,
    )


def _vm_memory(holder: FleetHolder, query: GetVmMemory) -> VmMemory:
    vm = holder.fleet.vms.get(query.vm)
    mem = holder.machine.memory.get(vm.host) if vm is not None else None
    if vm is None or mem is None:
        raise PoisonMessage(f"no VM {query.vm} on the hosts of this process")
    usage = mem.vm_usage(vm.name)
    full = vm.memory_mode == MemoryMode.FULL
    if query.digests and usage.pages > MAX_DIGESTS:
        raise PoisonMessage(
            f"{vm.name} has {usage.pages} pages; a reply carries digests of at most "
            f"{MAX_DIGESTS} (export its pages to a data flow instead)"
        )
    return VmMemory(
        vm=vm.name,
        host=vm.host,
        mode=vm.memory_mode.value,
        pages=usage.pages,
        resident_pages=usage.resident,
        shared_pages=usage.shared,
        swapped_pages=usage.swapped,
        used_pages=mem.used_pages(vm.name),
        checksum=mem.checksum(vm.name) if full else None,
        mapped_pages=holder.machine.page_caches.mapped(vm.name),
        whole_large_pages=mem.whole_large_pages(vm.name),
        digests=[int(d) for d in mem.page_digests(vm.name)] if full and query.digests else None,
    )
