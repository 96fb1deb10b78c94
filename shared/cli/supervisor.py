"""Run every service of the stack as a child process, and stop them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from shared.children import ending_with_parent

# Every deployable service: its name, its module (``python -m services.<module>``) and
# the settings that make it that service.
SERVICES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("hosts", "hosts", {}),
    ("scheduler-high", "scheduler", {"VPLANE_PRIORITY": "high"}),
    ("scheduler-low", "scheduler", {"VPLANE_PRIORITY": "low"}),
    ("tenants", "tenants", {}),
    ("contention-monitor", "contention", {}),
    ("migration-coordinator", "migration", {}),
    ("page-sharing", "sharing", {}),
    ("ft", "ft", {}),
)
SERVICE_NAMES = frozenset(name for name, _, _ in SERVICES)


# A crashed service is started again after a pause that doubles with each crash in a
# row (a service that ran this long since its last start is not crashing in a row).
FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0
STEADY_SECONDS = 60.0


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    restarts: int = 0
    # Crashes since it last ran steadily, and when it may be started again.
    in_a_row: int = 0
    due: float | None = None

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
            proc = self._launch(module, env, log_path)
            self.children.append(Child(name, module, env, proc, log_path, time.monotonic()))

    def _launch(self, module: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", f"services.{module}"],
                env={**self._env, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Ctrl-C reaches only `vplane up`, which then stops the children in order;
                # a `vplane up` killed outright takes them with it.
                start_new_session=True,
                # Safe with threads: it only makes one system call, loaded before the fork.
                preexec_fn=ending_with_parent(),  # noqa: PLW1509
            )

    def crashed(self) -> list[Child]:
        return [c for c in self.children if c.exit_code not in (None, 0)]

    def restart_crashed(self, now: float | None = None) -> list[Child]:
        """Start again each service that exited with an error, once its pause is over;
        the ones restarted now. A service rebuilds itself from the log, so a restart
        loses nothing; the pause keeps one that fails at once from spinning."""
        now = time.monotonic() if now is None else now
        restarted = []
        for child in self.crashed():
            if child.due is None:
                steady = now - child.started_at >= STEADY_SECONDS
                child.in_a_row = 1 if steady else child.in_a_row + 1
                child.due = now + min(MAX_PAUSE, FIRST_PAUSE * 2 ** (child.in_a_row - 1))
            if now < child.due:
                continue
            child.proc = self._launch(child.module, child.env, child.log_path)
            child.started_at, child.due = now, None
            child.restarts += 1
            restarted.append(child)
        return restarted

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
            code = child.proc.returncode
            # Still starting (no handler of its own yet), it ended by the SIGTERM it was
            # sent: stopped as asked.
            codes[child.name] = 0 if code == -signal.SIGTERM else code
        return codes
