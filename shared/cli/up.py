"""``vplane up``: the whole stack, a live view, and a clean stop with a summary."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from schemas.host import HostTelemetry
from schemas.service import ServiceStarted
from shared.broker import EmbeddedNats
from shared.bus import Logged, Stream
from shared.bus.factory import bus_from_url
from shared.cli.common import READER_GONE, URL_FILE, data_dir, print_line
from shared.cli.events import format_entry
from shared.cli.supervisor import SERVICE_NAMES, SERVICES, Supervisor
from shared.settings import Settings


class View:
    """What the live view shows, fed by the event log and telemetry."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.recent: deque[str] = deque(maxlen=8)
        self.hosts: dict[str, HostTelemetry] = {}
        self.samples = 0
        self.started: set[str] = set()

    async def on_event(self, entry: Logged) -> None:
        self.events[entry.envelope.type if entry.envelope else "undecodable"] += 1
        self.recent.append(format_entry(entry))
        if entry.envelope is not None and isinstance(entry.envelope.data, ServiceStarted):
            self.started.add(entry.envelope.data.service)

    async def on_sample(self, entry: Logged) -> None:
        if entry.envelope is not None and isinstance(entry.envelope.data, HostTelemetry):
            self.samples += 1
            self.hosts[entry.envelope.data.host] = entry.envelope.data

    def render(self, url: str, elapsed: float) -> Group:
        table = Table("host", "tick", "cpu demand", "mem reserved", "VMs on/all", title="hosts")
        for name in sorted(self.hosts):
            t = self.hosts[name]
            table.add_row(
                name,
                str(t.tick),
                f"{t.cpu_demand_mhz}/{t.cpu_capacity_mhz} MHz",
                f"{t.mem_reserved_mib}/{t.mem_capacity_mib} MiB",
                f"{t.vms_running}/{t.vms_total}",
            )
        head = Text(
            f"vplane up · {url} · {elapsed:.0f}s · events {sum(self.events.values())} · "
            f"telemetry samples {self.samples} · Ctrl-C stops"
        )
        recent = (Text(r, no_wrap=True, overflow="ellipsis") for r in self.recent)
        return Group(head, table, Text("recent events:"), *recent)


async def _run(
    url: str, namespace: str, duration: float | None, sup: Supervisor, gone: asyncio.Event
) -> View:
    """Watch the stack until stopped: by Ctrl-C, by ``duration``, or (``gone``) by the
    reader of its output going away (`vplane up | head`)."""
    view = View()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = bus_from_url(url, namespace, client_name="vplane-up")
    await bus.start()
    tty = sys.stdout.isatty()
    console = Console()
    start = time.monotonic()

    async def on_event(entry: Logged) -> None:
        await view.on_event(entry)
        if not tty:
            print_line(format_entry(entry), gone)

    try:
        await bus.watch(Stream.EVENTS, (), on_event, from_seq=await bus.last_seq() + 1)
        await bus.watch(Stream.TELEMETRY, (), view.on_sample)
        announced = False
        with (
            Live(console=console, auto_refresh=False, transient=False)
            if tty
            else contextlib.nullcontext() as live
        ):
            while not stop.is_set() and not gone.is_set():
                elapsed = time.monotonic() - start
                if duration is not None and elapsed >= duration:
                    break
                if not announced and view.started >= SERVICE_NAMES:
                    announced = True
                    hint = "vplane vm create web1 --cpu 2 --mem 2048 --wait"
                    print_line(f"stack ready on {url}; try: {hint}", gone)
                for child in sup.restart_crashed():
                    print_line(
                        f"service {child.name} failed; started it again "
                        f"(restart {child.restarts}); see {child.log_path}",
                        gone,
                    )
                if live is not None:
                    live.update(view.render(url, elapsed), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await bus.close()
    return view


def up(
    bus: Annotated[
        str | None,
        typer.Option(
            "--bus",
            help="Use this broker (nats://... or amqp://...) instead of an embedded NATS server.",
        ),
    ] = None,
    hosts: Annotated[int, typer.Option("--hosts", min=1, max=10_000, help="Emulated hosts.")] = 3,
    duration: Annotated[
        float | None, typer.Option("--duration", min=0.1, help="Stop after this many seconds.")
    ] = None,
    data_dir_opt: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Where the embedded broker keeps its log (default ./.vplane)."
        ),
    ] = None,
    tick: Annotated[
        float, typer.Option("--tick", min=0.01, help="Seconds between telemetry ticks.")
    ] = 1.0,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65_000,
            help="Serve each service's Prometheus /metrics on 127.0.0.1 from this port on "
            "(one port a service, in the order listed at start); 0: none.",
        ),
    ] = 0,
) -> None:
    """Bring the whole stack up: a broker (unless --bus), every service, N emulated hosts."""
    settings = Settings.from_env()
    root = data_dir_opt or data_dir()
    url = bus or settings.bus_url
    broker: EmbeddedNats | None = None
    if url is None:
        broker = EmbeddedNats(root / "nats").start()
        url = broker.url
        (root / URL_FILE).write_text(url + "\n")
        print(f"embedded nats-server {url}, data in {root / 'nats'}", flush=True)
    sup = Supervisor(
        {
            "VPLANE_BUS_URL": url,
            "VPLANE_HOSTS": str(hosts),
            "VPLANE_TICK_SECONDS": str(tick),
            "VPLANE_NAMESPACE": settings.namespace,
            "VPLANE_LOG_FORMAT": "json",
            # The hosts processes' shared datastore sits beside the broker's log.
            "VPLANE_DATASTORE": settings.datastore or str(root / "datastore" / settings.namespace),
        },
        root / "logs",
    )
    started = time.monotonic()
    view: View | None = None
    gone = asyncio.Event()
    services = SERVICES
    if metrics_port:
        services = tuple(
            (name, module, {**env, "VPLANE_METRICS_PORT": str(metrics_port + i)})
            for i, (name, module, env) in enumerate(SERVICES)
        )
        for i, (name, _, _) in enumerate(SERVICES):
            print(f"metrics of {name}: http://127.0.0.1:{metrics_port + i}/metrics", flush=True)
    try:
        sup.start(services)
        view = asyncio.run(_run(url, settings.namespace, duration, sup, gone))
    finally:
        codes = sup.stop()
        if broker is not None:
            broker.stop()
            _forget_url(root / URL_FILE, url)
        _summary(view, codes, time.monotonic() - started, url)
    if any(codes.values()):
        raise typer.Exit(1)
    if gone.is_set():
        raise typer.Exit(READER_GONE)


def _forget_url(path: Path, url: str) -> None:
    """The CLI's way to this stack goes with it; a stack started here since (while this
    one was stopping) keeps its own."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip() == url:
            path.unlink()


def _summary(view: View | None, codes: dict[str, int], elapsed: float, url: str) -> None:
    print(f"\nvplane up ran {elapsed:.1f}s on {url}")
    if view is not None:
        kinds = ", ".join(f"{n} {t}" for t, n in view.events.most_common())
        print(f"events appended: {sum(view.events.values())}" + (f" ({kinds})" if kinds else ""))
        print(f"telemetry samples seen: {view.samples} from {len(view.hosts)} hosts")
    print("services: " + ", ".join(f"{n} exited {c}" for n, c in codes.items()))
