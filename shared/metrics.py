"""A service process's Prometheus metrics, served on 127.0.0.1 at ``VPLANE_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

LEDGER_DIFFERENCES = Gauge(
    "vplane_ledger_differences",
    "Disagreements between the capacity ledger and what a host runs that outlasted one "
    "reconciliation: a VM without a reservation, on another host or of another size than "
    "reserved, or a VM reservation for no VM",
    ["host"],
)
GUEST_MEMORY_DIVERGENCES = Counter(
    "vplane_guest_memory_divergences_total",
    "Logged events a host's guest memory could not follow while rebuilding (each also a "
    "GuestMemoryDiverged event)",
    ["host"],
)


class MetricsPortTaken(Exception):
    pass


def serve_metrics(port: int) -> None:
    """Serve /metrics from a thread of the process (0: not at all), loopback only."""
    if not port:
        return
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as err:
        raise MetricsPortTaken(f"cannot serve metrics on 127.0.0.1:{port}: {err.strerror}") from err
