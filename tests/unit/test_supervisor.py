"""`vplane up`'s supervisor starts a failed service again, after a pause that grows
while it keeps failing."""

from __future__ import annotations

import time
from pathlib import Path

from shared.cli.supervisor import FIRST_PAUSE, Supervisor

# The hosts service with no broker to talk to: it exits with an error at once.
FAILING = (("hosts", "hosts", {"VPLANE_BUS_URL": ""}),)


def wait_exit(sup: Supervisor) -> None:
    deadline = time.monotonic() + 30
    while not sup.crashed():
        assert time.monotonic() < deadline, "the failing service did not exit"
        time.sleep(0.05)


def test_a_failed_service_is_started_again_after_a_growing_pause(tmp_path: Path) -> None:
    """It fails at once, is started again a pause later, fails again: twice the pause."""
    sup = Supervisor({}, tmp_path)
    sup.start(FAILING)
    try:
        [child] = sup.children
        wait_exit(sup)
        now = time.monotonic()
        assert sup.restart_crashed(now) == []  # its pause has only begun
        assert sup.restart_crashed(now + FIRST_PAUSE) == [child]
        assert child.restarts == 1
        wait_exit(sup)
        later = time.monotonic()
        # Failing again right away: the pause has doubled.
        assert sup.restart_crashed(later) == []
        assert sup.restart_crashed(later + FIRST_PAUSE) == []
        assert sup.restart_crashed(later + 2 * FIRST_PAUSE) == [child]
        assert child.restarts == 2
        assert "VPLANE_BUS_URL" in child.log_path.read_text()
    finally:
        sup.stop()


def test_a_service_stopped_while_still_starting_counts_as_stopped(tmp_path: Path) -> None:
    """SIGTERM before the service set up its own handler ends it by that signal: as asked."""
    sup = Supervisor({}, tmp_path)
    sup.start((("hosts", "hosts", {"VPLANE_BUS_URL": "nats://127.0.0.1:9"}),))
    assert sup.stop() == {"hosts": 0}
