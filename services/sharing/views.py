"""The sharing figures ``vplane sharing`` shows, per host and for the cluster, as KSM
reports them: shared and sharing pages from the hosts' samples, passes and volatile pages
from the daemon's log, and the profit net of the daemon's own bookkeeping."""

from __future__ import annotations

from collections.abc import Mapping

from schemas.host import HostTelemetry
from schemas.sharing import HostSharing, SharingReport
from services.sharing.state import Sharing

MIB_PAGES = 256  # 4 KiB pages in a MiB


def report(
    state: Sharing,
    samples: Mapping[str, HostTelemetry],
    bookkeeping: Mapping[str, int],
    pages_per_second: float,
) -> SharingReport:
    hosts = [
        host_figures(state, host, samples.get(host), bookkeeping.get(host))
        for host in sorted(state.hosts)
    ]
    return SharingReport(
        hosts=hosts,
        cluster=_sum(hosts),
        policy=state.policy,
        pages_per_second=pages_per_second,
    )


def host_figures(
    state: Sharing, host: str, sample: HostTelemetry | None, bookkeeping: int | None
) -> HostSharing:
    """One host's figures: the hosts' from its last sample, the daemon's from the log (and
    its bookkeeping now, when it scans the host)."""
    record = state.record(host)
    last = record.last_pass
    kept = bookkeeping if bookkeeping is not None else (last.bookkeeping_bytes if last else 0)
    sharing = sample.mem_pages_sharing if sample else 0
    saved = sharing / MIB_PAGES
    kept_mib = kept / 2**20
    return HostSharing(
        host=host,
        pages_shared=sample.mem_pages_shared if sample else 0,
        pages_sharing=sharing,
        pages_unshared_again=sample.mem_pages_unshared_again if sample else 0,
        pages_volatile=last.volatile if last else 0,
        full_scans=record.full_scans,
        pages_scanned=record.pages_scanned,
        private_copies=record.private_copies,
        saved_mib=round(saved, 2),
        bookkeeping_mib=round(kept_mib, 2),
        net_profit_mib=round(saved - kept_mib, 2),
    )


def _sum(hosts: list[HostSharing]) -> HostSharing:
    def total(name: str) -> int:
        return sum(int(getattr(h, name)) for h in hosts)

    saved = round(sum(h.saved_mib for h in hosts), 2)
    kept = round(sum(h.bookkeeping_mib for h in hosts), 2)
    return HostSharing(
        host="cluster",
        pages_shared=total("pages_shared"),
        pages_sharing=total("pages_sharing"),
        pages_unshared_again=total("pages_unshared_again"),
        pages_volatile=total("pages_volatile"),
        full_scans=total("full_scans"),
        pages_scanned=total("pages_scanned"),
        private_copies=total("private_copies"),
        saved_mib=saved,
        bookkeeping_mib=kept,
        net_profit_mib=round(saved - kept, 2),
    )
