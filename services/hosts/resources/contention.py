"""One tick of contention for every VM of every host: who gets what, and what waiting cost.

CPU, each network direction and storage throughput are shared out by weighted max-min
fair share (``fairshare``), reservations first. Memory is shared out the same way (weighed
by configured size); what a VM needs but is not granted is reclaimed from it, by its
balloon first up to ``balloon_max`` of its memory, the rest by host swap.
"""

from __future__ import annotations

import numpy as np

from services.hosts.resources.arrays import (
    F64,
    DemandArrays,
    HostArrays,
    HostUsage,
    Usage,
    VmArrays,
    VmUsage,
)
from services.hosts.resources.fairshare import share_out, sum_by

# vSphere's default limit: a balloon driver may reclaim up to 65 % of a VM's memory.
BALLOON_MAX = 0.65
# A VM granted nothing reports this slowdown rather than infinity, so telemetry stays finite.
MAX_SLOWDOWN = 1_000.0


def contend(
    hosts: HostArrays,
    vms: VmArrays,
    demand: DemandArrays,
    tick_s: float,
    *,
    balloon_max: float = BALLOON_MAX,
) -> Usage:
    """Grants and contention counters for one ``tick_s``-long tick."""
    n = len(hosts)
    on = vms.running.astype(np.float64)
    host = vms.host
    tick_ms = tick_s * 1_000.0

    core_mhz = hosts.cpu_mhz[host]
    full_mhz = vms.vcpus * core_mhz
    cpu_demand = on * np.minimum(demand.cpu_cores * core_mhz, full_mhz)
    cpu_ask = np.minimum(cpu_demand, vms.cpu_cap * full_mhz)
    cpu_used = share_out(
        host, hosts.cpu_cores * hosts.cpu_mhz, cpu_ask, vms.cpu_reservation_mhz, vms.shares
    )
    # Unmet demand in cores' worth, times the tick: vCPU-milliseconds spent runnable but
    # not running; the cap's share of it is vSphere's "max limited" time.
    ready_ms = (cpu_demand - cpu_used) / core_mhz * tick_ms
    maxlimited_ms = (cpu_demand - cpu_ask) / core_mhz * tick_ms
    latency_pct = 100.0 * ready_ms / (vms.vcpus * tick_ms)

    # A VM needs resident what it touches, and all it reserved whether it touches it or not.
    mem_active = on * np.minimum(demand.mem_active_mib, vms.mem_mib)
    mem_need = np.maximum(mem_active, on * vms.mem_reservation_mib)
    mem_granted = share_out(host, hosts.mem_mib, mem_need, vms.mem_reservation_mib, vms.mem_mib)
    reclaimed = mem_need - mem_granted
    balloon = np.minimum(reclaimed, balloon_max * vms.mem_mib)
    swap = reclaimed - balloon

    no_floor = np.zeros(len(vms))
    tx_want = on * demand.net_tx_mbps
    rx_want = on * demand.net_rx_mbps
    tx = share_out(host, hosts.net_mbps, tx_want, no_floor, vms.shares)
    rx = share_out(host, hosts.net_mbps, rx_want, no_floor, vms.shares)
    read_want = on * demand.storage_read_mbs
    io_want = read_want + on * demand.storage_write_mbs
    io = share_out(host, hosts.storage_mbs, io_want, no_floor, vms.shares)
    read_share = np.divide(read_want, io_want, out=np.zeros(len(vms)), where=io_want > 0)
    read = io * read_share

    slowdown = np.maximum.reduce(
        [
            _slowdown(cpu_demand, cpu_used),
            _slowdown(mem_need, mem_granted),
            _slowdown(tx_want, tx),
            _slowdown(rx_want, rx),
            _slowdown(io_want, io),
        ]
    )
    per_vm = VmUsage(
        cpu_demand_mhz=cpu_demand,
        cpu_used_mhz=cpu_used,
        cpu_ready_ms=ready_ms,
        cpu_maxlimited_ms=maxlimited_ms,
        cpu_latency_pct=latency_pct,
        mem_active_mib=mem_active,
        mem_granted_mib=mem_granted,
        mem_balloon_mib=balloon,
        mem_swap_mib=swap,
        net_tx_mbps=tx,
        net_rx_mbps=rx,
        storage_read_mbs=read,
        storage_write_mbs=io - read,
        slowdown=slowdown,
    )
    per_host = HostUsage(
        cpu_demand_mhz=sum_by(host, cpu_demand, n),
        cpu_used_mhz=sum_by(host, cpu_used, n),
        mem_active_mib=sum_by(host, mem_active, n),
        mem_granted_mib=sum_by(host, mem_granted, n),
        mem_balloon_mib=sum_by(host, balloon, n),
        mem_swap_mib=sum_by(host, swap, n),
        net_tx_mbps=sum_by(host, tx, n),
        net_rx_mbps=sum_by(host, rx, n),
        storage_read_mbs=sum_by(host, read, n),
        storage_write_mbs=sum_by(host, io - read, n),
        storage_provisioned_gib=sum_by(host, vms.disk_gib, n),
        vms_running=sum_by(host, on, n),
    )
    return Usage(per_vm, per_host)


def _slowdown(want: F64, got: F64) -> F64:
    """want / got where something was wanted, else 1; at most MAX_SLOWDOWN."""
    got = np.maximum(got, want / MAX_SLOWDOWN)
    ratio = np.divide(want, got, out=np.full(len(want), MAX_SLOWDOWN), where=got > 0)
    return np.where(want > 0, np.clip(ratio, 1.0, MAX_SLOWDOWN), 1.0)
