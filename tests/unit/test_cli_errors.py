"""A user's mistakes get one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from shared.broker import free_port
from tests.integration.stack import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["vm", "create"], "Missing argument 'name'"),
        (["vm", "create", "x", "--mem", "64"], "Missing option '--cpu'"),
        (["vm", "create", "x", "--cpu", "two", "--mem", "64"], "Invalid value for '--cpu'"),
        (["up", "--hosts", "0"], "Invalid value for '--hosts'"),
        (["vm", "numa-move", "x", "--node", "-1"], "Invalid value for '--node'"),
        (["events", "tail", "--since", "0"], "Invalid value for '--since'"),
    ],
)
def test_wrong_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    """Usage errors print one line naming the problem and where to get help."""
    done = cli(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vplane: error: ")
    assert message in lines[0]
    assert "--help" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["vm", "create", "bad.name", "--cpu", "1", "--mem", "64"],
            "invalid vm: String should match",
        ),
        (["vm", "create", "x", "--cpu", "1", "--mem", "1"], "invalid mem_mib"),
        (
            ["vm", "create", "x", "--cpu", "1", "--mem", "64", "--priority", "urgent"],
            "invalid --priority 'urgent'",
        ),
        (
            ["vm", "create", "x", "--cpu", "1", "--mem", "64", "--policy", "tightest"],
            "invalid --policy 'tightest'",
        ),
        (
            ["vm", "create", "x", "--cpu", "1", "--mem", "64", "--host", "h1", "--on-host", "h2"],
            "--host names the host",
        ),
        (["vm", "create", "x", "--cpu", "1", "--mem", "64", "--near", "a.b"], "invalid rules"),
        (["vm", "migrate", "x", "--to", "h/1"], "invalid target"),
        (
            ["vm", "numa-move", "x", "--node", "1", "--order", "random"],
            "invalid --order 'random': use hot-first, sequential",
        ),
        (["host", "maintenance", "h1", "maybe"], "invalid mode 'maybe': use on or off"),
    ],
)
def test_invalid_values_are_refused_before_sending(args: list[str], message: str) -> None:
    """Values the command schema refuses are reported without touching the bus."""
    done = cli(*args, "--bus", "nats://127.0.0.1:1")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert message in done.stderr


def test_unreachable_bus_is_one_line(tmp_path: Path) -> None:
    """A bus nobody listens on gives one line naming the URL, and exit 1."""
    url = f"nats://127.0.0.1:{free_port()}"
    done = cli("vms", "--bus", url, env={"VPLANE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"vplane: error: cannot reach NATS at {url}")
    assert "Traceback" not in done.stdout + done.stderr


def test_no_bus_configured_says_how_to_get_one(tmp_path: Path) -> None:
    """Without --bus, VPLANE_BUS_URL or a running `vplane up`, the CLI says what to do."""
    done = cli("hosts", env={"VPLANE_DATA_DIR": str(tmp_path), "VPLANE_BUS_URL": ""})
    assert done.returncode == 1
    assert "start a stack with `vplane up`" in done.stderr


def test_unsupported_bus_scheme(tmp_path: Path) -> None:
    """A URL of a broker vplane does not speak is refused by name."""
    done = cli("vms", "--bus", "kafka://127.0.0.1:9092")
    assert done.returncode == 1
    assert "unsupported bus URL 'kafka://127.0.0.1:9092'" in done.stderr


@pytest.mark.broker
def test_rabbitmq_refusing_the_login_is_one_line(amqp_url: str) -> None:
    """Wrong RabbitMQ credentials give one line that hides the password."""
    parts = urlsplit(amqp_url)
    wrong = urlunsplit(
        parts._replace(netloc=f"{parts.username}:not-the-password@{parts.hostname}:{parts.port}")
    )
    done = cli("vms", "--bus", wrong)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ACCESS_REFUSED" in lines[0]
    assert "not-the-password" not in lines[0]


def test_explain_of_a_vm_never_placed_is_one_line(tmp_path: Path) -> None:
    """Explaining a VM the schedulers never saw says so in one line."""
    done = cli("explain", "ghost", "--bus", "memory://", env={"VPLANE_DATA_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "vplane: error: no placement of 'ghost' in the log (was it created with --host?)"
    )
