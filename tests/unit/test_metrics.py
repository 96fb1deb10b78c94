"""The ledger-differences metric of the hosts, and a service's /metrics endpoint."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from functools import reduce

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from schemas import Message
from schemas.host import HostRegistered
from schemas.pool import CapacityReleased
from schemas.transfers import MigrationMode, MigrationStarted, MigrationSwitchedOver
from schemas.vm import VmCreated, VmResized
from services.hosts.handlers import FleetHolder, reconcile
from services.hosts.state import evolve
from shared.broker import free_port
from shared.metrics import MetricsPortTaken, serve_metrics
from tests.reserving import reservation


def differences(host: str) -> float | None:
    return REGISTRY.get_sample_value("vplane_ledger_differences", {"host": host})


def created(vm: str, host: str, mem_mib: int = 1024) -> VmCreated:
    return VmCreated(vm=vm, host=host, cpu=1, mem_mib=mem_mib, priority="low", powered_on=True)


def folded(holder: FleetHolder, *events: Message) -> None:
    holder.fleet = reduce(evolve, events, holder.fleet)


def test_a_post_copy_vm_on_its_target_before_its_reservation_moves_is_no_disagreement() -> None:
    holder = FleetHolder(["pc1", "pc2"])
    folded(
        holder,
        *(
            HostRegistered(host=h, cpu_cores=16, cpu_mhz=2400, mem_mib=65536)
            for h in ("pc1", "pc2")
        ),
        reservation("moving", "pc1", 1, 1024),
        created("moving", "pc1"),
        reservation("moving", "pc2", 1, 1024, name="m1-in", purpose="migration"),
        MigrationStarted(
            migration="m1", vm="moving", source="pc1", target="pc2", expected_seconds=1
        ),
        MigrationSwitchedOver(
            migration="m1", vm="moving", source="pc1", target="pc2", mode=MigrationMode.POSTCOPY
        ),
    )
    assert holder.fleet.vms["moving"].host == "pc2"
    reconcile(holder)
    reconcile(holder)
    assert (differences("pc1"), differences("pc2")) == (0, 0)


def test_a_disagreement_counts_once_it_outlasts_one_reconciliation() -> None:
    """Each process counts its own hosts; a VM with no reservation, one bigger than its
    reservation and a reservation for no VM each count, once two reconciliations in a row
    have seen them; agreement again brings the figure back to zero."""
    holder = FleetHolder(["mx1", "mx2"])
    folded(
        holder,
        *(
            HostRegistered(host=h, cpu_cores=16, cpu_mhz=2400, mem_mib=65536)
            for h in ("mx1", "mx2", "other1")
        ),
        reservation("ok", "mx1", 1, 1024),
        created("ok", "mx1"),
        reservation("theirs", "other1", 1, 1024),
    )
    reconcile(holder)
    reconcile(holder)
    assert (differences("mx1"), differences("mx2")) == (0, 0)
    assert differences("other1") is None

    folded(
        holder,
        created("rogue", "mx1"),
        VmResized(vm="ok", host="mx1", cpu=1, mem_mib=2048),
        reservation("ghost", "mx2", 1, 512),
    )
    reconcile(holder)
    assert (differences("mx1"), differences("mx2")) == (0, 0)
    reconcile(holder)
    assert (differences("mx1"), differences("mx2")) == (2, 1)

    folded(
        holder,
        reservation("rogue", "mx1", 1, 1024),
        reservation("ok", "mx1", 1, 2048),
        CapacityReleased(host="mx2", reservation="ghost"),
    )
    reconcile(holder)
    assert (differences("mx1"), differences("mx2")) == (0, 0)


def scrape(port: int, deadline: float) -> dict[str, float]:
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        return {
            f"{s.name}{sorted(s.labels.items())}": s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.mark.timeout(60)
def test_a_hosts_process_serves_its_metrics_on_the_port_it_is_given() -> None:
    port = free_port()
    env = {
        **os.environ,
        "VPLANE_BUS_URL": "memory://",
        "VPLANE_HOSTS": "2",
        "VPLANE_TICK_SECONDS": "0.1",
        "VPLANE_METRICS_PORT": str(port),
        "VPLANE_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.hosts"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            samples = scrape(port, deadline)
            key = "vplane_ledger_differences[('host', 'h2')]"
            if key in samples or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert samples[key] == 0.0
        assert samples["vplane_ledger_differences[('host', 'h1')]"] == 0.0
        # A second process asked for the same port says so in one line, and exits.
        taken = subprocess.run(
            [sys.executable, "-m", "services.hosts"],
            env={**env, "VPLANE_HOST_PREFIX": "k"},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert taken.returncode == 1
        last = taken.stderr.strip().splitlines()[-1]
        assert last.startswith(f"vplane hosts: cannot serve metrics on 127.0.0.1:{port}"), last
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""


def test_no_port_serves_nothing_and_a_taken_one_is_a_clear_error() -> None:
    serve_metrics(0)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(MetricsPortTaken, match=re.escape("cannot serve metrics on 127.0.0.1")):
            serve_metrics(int(held.getsockname()[1]))
