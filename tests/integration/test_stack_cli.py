"""The whole stack as a user runs it: `vplane up` in one terminal, the CLI in another."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.cli.supervisor import SERVICES
from shared.testing import unique_namespace
from tests.brokers import drop_rabbitmq_namespace
from tests.integration.stack import VPLANE, cli, drain, wait_for_line

pytestmark = [pytest.mark.broker, pytest.mark.integration]


@pytest.fixture(params=["nats", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """`vplane up` on an embedded NATS server, or on RabbitMQ with `--bus amqp://...`;
    yields the environment that points the CLI at it."""
    cli_env = {"VPLANE_DATA_DIR": str(tmp_path / "data"), "VPLANE_BUS_URL": ""}
    bus_args: list[str] = []
    if request.param == "rabbitmq":
        url = request.getfixturevalue("amqp_url")
        cli_env = {"VPLANE_BUS_URL": url, "VPLANE_NAMESPACE": unique_namespace()}
        bus_args = ["--bus", url]
    env = {**os.environ, **cli_env}
    proc = subprocess.Popen(
        [VPLANE, "up", *bus_args, "--hosts", "2", "--duration", "120", "--tick", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    stopped_in_time = True
    try:
        wait_for_line(proc, "stack ready", timeout=60)
        printed = drain(proc)
        yield cli_env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                stopped_in_time = False
                proc.kill()
                proc.wait()
        if request.param == "rabbitmq":
            drop_rabbitmq_namespace(cli_env["VPLANE_BUS_URL"], cli_env["VPLANE_NAMESPACE"])
    assert stopped_in_time, "vplane up did not stop within 30 s of Ctrl-C:\n" + "".join(printed)


def test_vm_create_is_answered_and_visible_everywhere(stack: dict[str, str]) -> None:
    """`vm create --wait` prints the answer; `vms`, `hosts` and `events tail` show it."""
    created = cli("vm", "create", "web1", "--cpu", "2", "--mem", "2048", "--wait", env=stack)
    assert created.returncode == 0, created.stderr
    assert "created web1 on h1" in created.stdout

    vms = json.loads(cli("vms", "--json", env=stack).stdout)
    assert [(v["vm"], v["host"], v["state"]) for v in vms] == [("web1", "h1", "on")]

    hosts = json.loads(cli("hosts", "--json", env=stack).stdout)
    assert {h["host"]: h["mem_reserved_mib"] for h in hosts} == {"h1": 2048, "h2": 0}

    why = cli("explain", "web1", env=stack)
    assert why.returncode == 0, why.stderr
    assert why.stdout.startswith("web1 -> h1 by scheduler-low in round ")
    assert "hosts removed by filter: state 0" in why.stdout
    assert "runner-up h2" in why.stdout

    tail = cli("events", "tail", "--since", "1", "--no-follow", "--json", env=stack)
    entries = [json.loads(line) for line in tail.stdout.splitlines()]
    created_events = [e for e in entries if e["type"] == "VmCreated"]
    assert [e["data"]["vm"] for e in created_events] == ["web1"]
    assert [e["type"] for e in entries].count("HostRegistered") == 2


def test_vm_power_and_rejections_through_the_cli(stack: dict[str, str]) -> None:
    """Stopping and starting a VM works; a duplicate or oversized VM is rejected with exit 1."""
    assert (
        cli("vm", "create", "db", "--cpu", "1", "--mem", "512", "--wait", env=stack).returncode == 0
    )
    stopped = cli("vm", "stop", "db", "--wait", env=stack)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "powered off db on h1"

    dup = cli("vm", "create", "db", "--cpu", "1", "--mem", "512", "--wait", env=stack)
    assert dup.returncode == 1
    assert "rejected (already-exists)" in dup.stdout

    huge = cli("vm", "create", "huge", "--cpu", "1", "--mem", "999999", "--wait", env=stack)
    assert huge.returncode == 1
    assert "insufficient-capacity" in huge.stdout

    missing = cli("vm", "start", "nope", env=stack)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "vplane: error: no VM named 'nope' (see `vplane vms`)"

    # A host nobody runs: refused at once, and nothing is left waiting in a queue.
    started = time.monotonic()
    nowhere = cli(
        "vm", "create", "x", "--cpu", "1", "--mem", "64", "--host", "nohost", "--wait", env=stack
    )
    assert nowhere.returncode == 1
    assert "rejected (unknown-host)" in nowhere.stdout, nowhere.stdout + nowhere.stderr
    crash = cli("host", "crash", "nohost", "--wait", env=stack)
    assert crash.returncode == 1
    assert crash.stderr.strip() == (
        "vplane: error: rejected (unknown-host): no host nohost is registered (see `vplane hosts`)"
    )
    assert time.monotonic() - started < 10


def test_a_vm_s_disk_lives_on_the_shared_datastore(stack: dict[str, str]) -> None:
    """A VM's guest writes its disk on the datastore every hosts process shares; `vms` and
    `hosts` show the disk and what the datastore holds; the disk goes with its VM."""
    made = cli(
        "vm", "create", "db", "--cpu", "1", "--mem", "256", "--memory", "full", "--disk", "3",
        "--wait", env=stack,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    [vm] = json.loads(cli("vms", "--json", env=stack).stdout)
    assert (vm["vm"], vm["disk_gib"]) == ("db", 3)

    def used() -> float:
        hosts = json.loads(cli("hosts", "--json", env=stack).stdout)
        assert {h["datastore_capacity_gib"] for h in hosts} == {1024}
        return float(max(h["datastore_used_gib"] for h in hosts))

    deadline = time.monotonic() + 20
    while used() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert used() > 0, "the guest wrote nothing to its disk"

    table = cli("vms", env=stack).stdout
    assert "disk" in table

    bad = cli("vm", "create", "x", "--cpu", "1", "--mem", "64", "--disk", "0", env=stack)
    assert bad.returncode == 2
    assert "--disk" in bad.stderr

    assert cli("vm", "stop", "db", "--wait", env=stack).returncode == 0
    gone = cli("vm", "destroy", "db", "--wait", env=stack)
    assert gone.returncode == 0, gone.stderr
    deadline = time.monotonic() + 20
    while used() > 0.001 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert used() <= 0.001, "the destroyed VM's disk is still on the datastore"


def test_checkpoint_and_restore_through_the_cli(stack: dict[str, str]) -> None:
    """A running VM checkpointed, listed, restored once powered off; the checkpoint that a
    restored disk is made from cannot be deleted; a wrong request is one clear line."""
    made = cli(
        "vm", "create", "db", "--cpu", "1", "--mem", "128", "--memory", "full", "--wait",
        env=stack,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    saved = cli("vm", "checkpoint", "db", "--name", "c1", "--wait", env=stack)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert saved.stdout.startswith("checkpoint saved of db on h1"), saved.stdout

    [listed] = json.loads(cli("vm", "checkpoints", "db", "--json", env=stack).stdout)
    assert (listed["checkpoint"], listed["state"]) == ("c1", "complete")
    assert listed["bytes"] == 128 * 2**20 + 8192
    assert "c1" in cli("vm", "checkpoints", env=stack).stdout

    copied = cli("vm", "checkpoint", "db", "--name", "c2", "--copy-parent", "--wait", env=stack)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert "disk=c2..copy" in copied.stdout, copied.stdout
    assert "vm_disk=db.c1" in copied.stdout, copied.stdout

    twice = cli("vm", "checkpoint", "db", "--name", "c1", "--wait", env=stack)
    assert twice.returncode == 1
    assert "rejected (already-exists)" in twice.stdout

    running = cli("vm", "restore", "db", "c1", "--wait", env=stack)
    assert running.returncode == 1
    assert "rejected (wrong-state)" in running.stdout

    assert cli("vm", "stop", "db", "--wait", env=stack).returncode == 0
    restored = cli("vm", "restore", "db", "c1", "--wait", env=stack)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert restored.stdout.startswith("restored db on h1"), restored.stdout
    assert listed["memory_checksum"] in restored.stdout

    copied = cli("vm", "restore", "db", "c1", "--as", "copy", "--wait", env=stack)
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert copied.stdout.startswith("created copy on h"), copied.stdout
    memory = json.loads(cli("vm", "memory", "copy", "--json", env=stack).stdout)
    assert memory["checksum"] == listed["memory_checksum"]
    wrong = cli("vm", "restore", "copy", "c1", "--as", "again", env=stack)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "vplane: error: checkpoint 'c1' is of VM db, not copy"

    kept = cli("vm", "checkpoint-delete", "c1", "--wait", env=stack)
    assert kept.returncode == 1
    assert "rejected (wrong-state)" in kept.stdout

    missing = cli("vm", "checkpoint-delete", "nope", env=stack)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "vplane: error: no checkpoint named 'nope' (see `vplane vm checkpoints`)"
    )


def test_priorities_migration_and_maintenance_through_the_cli(stack: dict[str, str]) -> None:
    """A newcomer's session: VMs of both priorities, a live migration, a host emptied for
    maintenance and given back, and the refusals a wrong request gets."""
    for name, prio in (("api", "high"), ("batch", "low")):
        made = cli(
            "vm",
            "create",
            name,
            "--cpu",
            "1",
            "--mem",
            "512",
            "--priority",
            prio,
            "--wait",
            env=stack,
        )
        assert made.returncode == 0, made.stderr
    where = {v["vm"]: v["host"] for v in json.loads(cli("vms", "--json", env=stack).stdout)}
    other = "h2" if where["api"] == "h1" else "h1"
    moved = cli("vm", "migrate", "api", "--to", other, "--priority", "high", "--wait", env=stack)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"migrated api {where['api']} -> {other} (precopy)" in moved.stdout
    # Each round as it is done, then the end: an accounting-only VM has no bytes to compare.
    assert "round 0 (live)" in moved.stdout
    assert "no memory bytes to compare" in moved.stdout
    why = cli("explain", "api", env=stack)
    assert f"then migrated {where['api']} -> {other}" in why.stdout, why.stdout

    on = cli("host", "maintenance", other, "on", "--wait", env=stack)
    assert on.returncode == 0, on.stdout + on.stderr
    assert on.stdout.startswith(f"maintenance started {other}")
    # Two hosts: with one in maintenance, the other is the last usable one.
    last = cli("host", "maintenance", where["api"], "on", "--wait", env=stack)
    assert last.returncode == 1
    assert "rejected (last-usable-host)" in last.stdout
    off = cli("host", "maintenance", other, "off", "--wait", env=stack)
    assert off.returncode == 0
    assert off.stdout.startswith(f"maintenance ended {other}")
    ghost = cli("host", "maintenance", "h9", "on", "--wait", env=stack)
    assert ghost.returncode == 1
    assert "rejected (unknown-host): no host h9" in ghost.stdout


def test_tenant_clusters_through_the_cli(stack: dict[str, str]) -> None:
    """Create a cluster, run a job on it, see it in `vplane clusters`; wrong requests
    get one clear refusal each."""
    made = cli(
        "cluster", "create", "t1", "--workers", "2", "--min", "1", "--max", "3", "--wait", env=stack
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("cluster created: (cluster=t1, workers=2")
    bad = cli(
        "cluster", "create", "t2", "--workers", "2", "--min", "3", "--max", "2", "--wait", env=stack
    )
    assert bad.returncode == 1
    assert "rejected (invalid-request): minimum 3 is above maximum 2" in bad.stdout
    nowhere = cli("job", "submit", "nope", "--maps", "2", "--wait", env=stack)
    assert "rejected (unknown-cluster): no cluster nope" in nowhere.stdout
    ran = cli(
        "job",
        "submit",
        "t1",
        "--maps",
        "4",
        "--map-seconds",
        "1",
        "--name",
        "j1",
        "--wait",
        env=stack,
    )
    assert ran.stdout.startswith("job submitted: (cluster=t1, job=j1"), ran.stdout + ran.stderr

    def listed() -> dict[str, object]:
        [row] = json.loads(cli("clusters", "--json", env=stack).stdout)
        assert isinstance(row, dict)
        return row

    deadline = time.monotonic() + 60
    while (row := listed())["jobs_done"] != 1:
        assert time.monotonic() < deadline, row
        time.sleep(0.5)
    assert row["cluster"] == "t1"
    assert row["running"] == 2
    assert row["map_slots"] == 4  # 2 workers x 2 vCPU


def test_events_tail_follows_new_events(stack: dict[str, str]) -> None:
    """`events tail` keeps printing events as they are appended, and Ctrl-C stops it,
    even started with SIGINT ignored (as a script's background job is)."""
    env = {**os.environ, **stack}
    tail = subprocess.Popen(
        ["sh", "-c", f"trap '' INT; exec {shlex.quote(str(VPLANE))} events tail"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cli("vm", "create", "live", "--cpu", "1", "--mem", "256", env=stack)
        wait_for_line(tail, "VmCreated", timeout=30)
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(10)
    # Piped into a reader that has had enough, it stops following, without a word.
    piped = subprocess.run(
        ["sh", "-c", f"{shlex.quote(str(VPLANE))} events tail | head -1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert len(piped.stdout.splitlines()) == 1, piped.stdout
    assert piped.stderr == ""


def up_on_embedded_nats(tmp_path: Path) -> subprocess.Popen[str]:
    """`vplane up --hosts 1` on an embedded NATS server with its data under ``tmp_path``."""
    env = {**os.environ, "VPLANE_DATA_DIR": str(tmp_path / "data"), "VPLANE_BUS_URL": ""}
    return subprocess.Popen(
        [VPLANE, "up", "--hosts", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def test_up_stops_cleanly_on_interrupt_with_a_summary(tmp_path: Path) -> None:
    """Ctrl-C stops the services and the broker, and `vplane up` prints a summary and exits 0."""
    proc = up_on_embedded_nats(tmp_path)
    wait_for_line(proc, "stack ready", timeout=60)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "services: hosts exited 0" in out
    assert "events appended" in out
    assert not (tmp_path / "data" / "bus.url").exists()


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` now, read from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name, in parentheses, may hold spaces: the fields follow it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_up_killed_outright_takes_its_services_and_broker_with_it(tmp_path: Path) -> None:
    """A `vplane up` that gets SIGKILL (no chance to stop anything) leaves no service or
    nats-server running behind it: each is sent SIGTERM when its parent dies."""
    proc = up_on_embedded_nats(tmp_path)
    try:
        wait_for_line(proc, "stack ready", timeout=60)
        drain(proc)
        children = children_of(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    # Every service and the broker.
    assert len(children) == len(SERVICES) + 1, children
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in children if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after vplane up was killed: {left}"


def test_up_piped_into_head_stops_the_stack_when_head_has_read_enough(tmp_path: Path) -> None:
    """`vplane up | head -3`: once head has gone, the stack stops cleanly (no traceback
    for each event it could not print, no service left running) and says why by its
    exit code."""
    env = {**os.environ, "VPLANE_DATA_DIR": str(tmp_path / "data"), "VPLANE_BUS_URL": ""}
    done = subprocess.run(
        [
            "bash",
            "-c",
            f"{shlex.quote(str(VPLANE))} up --hosts 1 --duration 60 | head -3; "
            'echo "exit ${PIPESTATUS[0]}"',
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    assert lines[0].startswith("embedded nats-server")
    assert lines[-1] == "exit 1"
    assert done.stderr == ""
    assert not (tmp_path / "data" / "bus.url").exists()


def test_up_with_duration_stops_by_itself(tmp_path: Path) -> None:
    """`vplane up --duration` runs for that long, then stops cleanly."""
    env = {"VPLANE_DATA_DIR": str(tmp_path / "data"), "VPLANE_BUS_URL": ""}
    done = cli("up", "--hosts", "1", "--duration", "3", env=env, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "telemetry samples seen" in done.stdout


def test_host_placement_and_resizes_go_through_the_ledger(stack: dict[str, str]) -> None:
    """`vm create --host` and `vm resize` reserve in the ledger first: a grow that does not
    fit is refused, a shrink gives back, and `vplane ledger` finds the ledger equal to
    what the hosts run after each."""
    made = cli(
        "vm", "create", "db", "--cpu", "1", "--mem", "1024", "--host", "h2", "--wait", env=stack
    )
    assert made.returncode == 0, made.stdout + made.stderr
    assert "created db on h2" in made.stdout
    grown = cli("vm", "resize", "db", "--cpu", "2", "--mem", "4096", "--wait", env=stack)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert "resized db" in grown.stdout, grown.stdout
    too_big = cli("vm", "resize", "db", "--mem", "200000", "--wait", env=stack)
    assert too_big.returncode == 1
    assert "insufficient-capacity" in too_big.stdout, too_big.stdout
    # Above its working set (about half of it, for a steady workload).
    shrunk = cli("vm", "resize", "db", "--mem", "3072", "--wait", env=stack)
    assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr

    deadline = time.monotonic() + 15
    while True:
        check = cli("ledger", "--json", env=stack)
        report = json.loads(check.stdout)
        if check.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert check.returncode == 0, report
    assert report["differences"] == []
    assert report["vms"] == 1
    vms = json.loads(cli("vms", "--json", env=stack).stdout)
    assert [(v["vm"], v["host"], v["cpu"], v["mem_mib"]) for v in vms] == [("db", "h2", 2, 3072)]
    plain = cli("ledger", env=stack)
    assert plain.stdout.strip().endswith("0 counted twice"), plain.stdout
    assert "agree: 1 VMs" in plain.stdout


def test_page_sharing_and_forks_through_the_cli(stack: dict[str, str]) -> None:
    """A VM forked twice becomes a template its children map; the tree, the sharing
    figures and the refusals (a name in use, an unknown parent, destroying a template
    with children, a zero window) read as a user expects, one line each."""
    made = cli(
        "vm", "create", "gold", "--cpu", "1", "--mem", "64", "--memory", "full", "--wait",
        env=stack,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    forked = cli("vm", "fork", "gold", "kid", "--count", "2", "--off", env=stack)
    assert forked.returncode == 0, forked.stdout + forked.stderr
    lines = forked.stdout.splitlines()
    assert "is a template now: quiesced and read-only" in lines[0], lines
    assert [line.split(" on ")[0] for line in lines[1:]] == ["created kid-1", "created kid-2"]

    tree = cli("vm", "tree", env=stack).stdout.splitlines()
    assert tree[0].startswith("gold (template on h"), tree
    assert tree[1].startswith("  kid-1 (fork on h")
    assert "16384 shared pages, 0 private" in tree[1]
    nodes = json.loads(cli("vm", "tree", "--json", env=stack).stdout)["nodes"]
    assert {(n["vm"], n["parent"]) for n in nodes} == {
        ("gold", None),
        ("kid-1", "gold"),
        ("kid-2", "gold"),
    }

    for args, answer in (
        (("vm", "fork", "gold", "kid-1"), "rejected (already-exists): VM kid-1 exists already"),
        (("vm", "fork", "ghost", "x"), "rejected (unknown-vm): no VM ghost to fork"),
        (("vm", "destroy", "gold", "--wait"), "rejected (wrong-state): VM gold is the template"),
        (("sharing", "policy", "--window", "0"), "rejected (invalid-request): a read pattern"),
    ):
        refused = cli(*args, env=stack)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert refused.stdout.startswith(answer), (args, refused.stdout)

    deadline = time.monotonic() + 30
    while True:
        report = json.loads(cli("sharing", "--json", env=stack).stdout)
        sharing = sum(h["pages_sharing"] for h in report["hosts"])
        if sharing >= 2 * 16384 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sharing >= 2 * 16384, report
    assert report["cluster"]["pages_sharing"] == sharing
    table = cli("sharing", env=stack).stdout
    assert "cluster" in table
    assert "net profit MiB" in table
    assert cli("sharing", "policy", "--reads", "8", env=stack).returncode == 0
    assert json.loads(cli("sharing", "--json", env=stack).stdout)["policy"]["reads"] == 8


@pytest.mark.parametrize("stack", ["nats"], indirect=True)
def test_ft_through_the_cli(stack: dict[str, str]) -> None:
    """Protect a recorded guest and wait for its backup, read the pair's status, end the
    protection; refusals read as one line each. (FT on RabbitMQ: tests/integration/
    test_ft.py.)"""
    made = cli(
        "vm", "create", "web", "--cpu", "1", "--mem", "64", "--memory", "full",
        "--packets", "50", "--wait", env=stack,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    protected = cli("ft", "protect", "web", "--mode", "checkpoint", "--wait", env=stack)
    assert protected.returncode == 0, protected.stdout + protected.stderr
    assert "web-ft1" in protected.stdout, protected.stdout
    pairs = json.loads(cli("ft", "status", "--json", env=stack).stdout)["pairs"]
    assert [(p["vm"], p["mode"], p["phase"], p["backup"]) for p in pairs] == [
        ("web", "checkpoint", "protected", "web-ft1")
    ]
    assert "protected" in cli("ft", "status", env=stack).stdout

    for args, answer in (
        (("ft", "protect", "web", "--wait"), "rejected (already-exists): VM web is protected"),
        (("ft", "protect", "nosuch", "--wait"), "rejected (unknown-vm): no VM nosuch"),
    ):
        refused = cli(*args, env=stack)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert refused.stdout.startswith(answer), (args, refused.stdout)
    bad = cli("ft", "protect", "web", "--mode", "bogus", env=stack)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == [
        "vplane: error: invalid --mode 'bogus': use record-replay, checkpoint, lockstep"
    ], bad.stderr

    ended = cli("ft", "unprotect", "web", "--wait", env=stack)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert ended.stdout.strip() == (
        "protection ended for web (reason=unprotected, backup=web-ft1)"
    ), ended.stdout
    again = cli("ft", "unprotect", "web", "--wait", env=stack)
    assert again.returncode == 1
    assert again.stdout.startswith("rejected (unknown-vm): VM web is not protected")
