"""Run every service of the stack as a child process, and stop them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Every deployable service: its name, its module (``python -m services.<module>``) and
# the settings that make it that service.
SERVICES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("hosts", "hosts", {}),
    ("scheduler-high", "scheduler", {"VPLANE_PRIORITY": "high"}),
    ("scheduler-low", "scheduler", {"VPLANE_PRIORITY": "low"}),
    ("tenants", "tenants", {}),
    ("contention-monitor", "contention", {}),
)
SERVICE_NAMES = frozenset(name for name, _, _ in SERVICES)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()


class Supervisor:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env = {**os.environ, **env}
        self._log_dir = log_dir
        self.children: list[Child] = []

    def start(self, services: tuple[tuple[str, str, dict[str, str]], ...] = SERVICES) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        for name, module, env in services:
            log_path = self._log_dir / f"{name}.log"
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", f"services.{module}"],
                    env={**self._env, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Ctrl-C reaches only `vplane up`, which then stops the children in order.
                    start_new_session=True,
                )
            self.children.append(Child(name, proc, log_path))

    def crashed(self) -> list[Child]:
        return [c for c in self.children if c.exit_code not in (None, 0)]

    def stop(self, timeout: float = 15.0) -> dict[str, int]:
        """SIGTERM every child (they drain and ack), then SIGKILL what is left."""
        for child in self.children:
            if child.exit_code is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        codes = {}
        for child in self.children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            codes[child.name] = child.proc.returncode
        return codes
