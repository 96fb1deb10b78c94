"""A service process's Prometheus metrics, served on 127.0.0.1 at ``VPLANE_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
CHECKPOINT_STUN = Histogram(
    "vplane_checkpoint_stun_seconds",
    "How long a VM was stopped for a checkpoint (its disk switched, its memory marked "
    "copy-on-write)",
    ["host"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)
CHECKPOINT_SAVE = Histogram(
    "vplane_checkpoint_save_seconds",
    "How long the background save of a checkpoint's memory took",
    ["host"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHECKPOINTS_ENDED = Counter(
    "vplane_checkpoints_total",
    "Checkpoints that ended, by how: complete, failed (the save did not finish) or damaged "
    "(its file found not to read back as written)",
    ["host", "outcome"],
)
DATASTORE_USED = Gauge(
    "vplane_datastore_used_bytes", "What the shared datastore's files hold, as this process sees it"
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


MIGRATIONS_ENDED = Counter(
    "vplane_migrations_total",
    "Live migrations the coordinator ended, by how (completed or aborted) and mode",
    ["outcome", "mode"],
)
MIGRATION_DOWNTIME = Histogram(
    "vplane_migration_downtime_seconds",
    "Emulated time a migrated VM ran nowhere (its last round with the device state)",
    ["mode"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 5.0),
)
MIGRATION_BYTES = Counter(
    "vplane_migration_bytes_total", "Bytes live migrations put on the wire, by round kind", ["live"]
)
QUERIES_ASKED = Counter(
    "vplane_queries_asked_total",
    "Queries a service's decisions asked of other services (Outcome.queries)",
    ["service"],
)
QUERIES_FAILED = Counter(
    "vplane_queries_failed_total",
    "Queries asked that got no answer (nobody serves them, a timeout, the broker away, the "
    "server's handler failed); the service is handed a QueryFailed reply instead",
    ["service"],
)
REPLIES_FAILED = Counter(
    "vplane_replies_failed_total",
    "Replies to its queries that a service's replies handler failed to decide on or carry out",
    ["service"],
)
FT_SYNC_POINTS = Counter(
    "vplane_ft_sync_points_total",
    "Sync points of protected VMs (a log entry or epoch the backup caught up with), by "
    "mode and whether the two memories were equal",
    ["mode", "equal"],
)
FT_OUTPUTS_RELEASED = Counter(
    "vplane_ft_outputs_released_total",
    "Packets protected VMs sent, released to the outside world once their backup could "
    "say them too",
)
SHARING_PAIRS = Counter(
    "vplane_sharing_pairs_total",
    "Page pairs the hosts shared copy-on-write at the page-sharing daemon's proposal",
    ["host"],
)
SHARING_PASSES = Counter(
    "vplane_sharing_full_scans_total", "Passes the page-sharing daemon made over a host", ["host"]
)
SHARING_PRIVATE_COPIES = Counter(
    "vplane_sharing_private_copies_total",
    "Shared pages given a private copy for a read pattern, by reason",
    ["host", "reason"],
)
SHARING_SAVED = Gauge(
    "vplane_sharing_saved_mib",
    "MiB copy-on-write sharing saves on a host (its last sample)",
    ["host"],
)
