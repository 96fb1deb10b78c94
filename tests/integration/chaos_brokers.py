"""The brokers a chaos test breaks: a nats-server (or a three-node JetStream cluster)
killed with SIGKILL and started again on the same ports and stores, and RabbitMQ
connections of this test's own processes closed from the broker's side."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterable
from pathlib import Path

from shared.broker import BrokerError, EmbeddedNats, free_port


class CrashableNats(EmbeddedNats):
    """A nats-server (``sync_interval: always``) that can die without shutting down."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        assert proc is not None, "the server is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


class ClusterNode(CrashableNats):
    """One node of a JetStream cluster on loopback; every node routes to every other."""

    def __init__(self, data_dir: Path, name: str, route_ports: list[int], route: int) -> None:
        super().__init__(data_dir)
        self.name = name
        self.route_ports = route_ports
        self.route = route

    def _config(self) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        # The store is per node; the server name must be unique in a JetStream cluster.
        base = (
            super()._config().replace("server_name: vplane-embedded", f"server_name: {self.name}")
        )
        return base + "\n".join(
            [
                "cluster {",
                "  name: vplane-chaos",
                f"  listen: 127.0.0.1:{self.route}",
                f"  routes: [{routes}]",
                "}",
                "",
            ]
        )


def nats_cluster(root: Path, size: int = 3) -> list[ClusterNode]:
    routes = [free_port() for _ in range(size)]
    return [ClusterNode(root / f"n{i}", f"n{i}", routes, routes[i]) for i in range(size)]


def start_cluster(nodes: list[ClusterNode]) -> None:
    try:
        for node in nodes:
            node.start()
    except BrokerError:
        for node in nodes:
            node.stop()
        raise


# --- RabbitMQ ---------------------------------------------------------------------


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def client_ports(pids: Iterable[int], broker_port: int) -> set[int]:
    """The local ports of these processes' TCP connections to the broker."""
    wanted = {str(pid) for pid in pids}
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dport", f"= :{broker_port}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    ports = set()
    for line in out.splitlines():
        owners = set(re.findall(r"pid=(\d+)", line))
        if owners & wanted:
            local = line.split()[2]
            ports.add(int(local.rsplit(":", 1)[1]))
    return ports


def drop_connections(pids: Iterable[int], names: set[str], broker_port: int = 5672) -> int:
    """Close, from the broker's side, the connections that these processes opened and
    that name themselves one of ``names`` (the machine's broker is shared: nobody else's
    connections are touched)."""
    ports = client_ports(pids, broker_port)
    closed = 0
    listing = rabbitmqctl("list_connections", "pid", "name", "client_properties")
    for line in listing.splitlines():
        found = re.match(r"(<[^>]+>)\s+\S+:(\d+) -> ", line)
        named = re.search(r'\{"connection_name","([^"]+)"\}', line)
        if found and named and int(found.group(2)) in ports and named.group(1) in names:
            rabbitmqctl("close_connection", found.group(1), "chaos: dropped connection")
            closed += 1
    return closed


def queue_depths(prefix: str) -> dict[str, int]:
    """Messages (ready and unacknowledged) in every queue whose name starts with ``prefix``."""
    depths = {}
    for line in rabbitmqctl("list_queues", "name", "messages").splitlines():
        name, _, count = line.partition("\t")
        if name.startswith(prefix):
            depths[name] = int(count)
    return depths
