"""What a service's decisions read besides the log, carried over a restart.

A few decisions depend on what a service has seen of telemetry, which the log does not
keep: a contention detector's streak of ticks over its bar, a job tracker's progress on
each task. Kept only in memory, a restart would forget them and decide differently (a
detection a few ticks late, a task run again from the start). So the runtime writes them
into the service's ``ServiceStopped`` and gives them back to the next start, when that
announcement is the service's last one in the log; telemetry that came meanwhile waits in
the service's durable consumer, so it goes on as if it had never stopped. A process
killed outright writes nothing: its next start begins those from nothing, as before.
"""

from __future__ import annotations

from typing import Any, Protocol


class Carried(Protocol):
    def save(self) -> dict[str, Any]:
        """The state, as JSON values."""

    def load(self, saved: dict[str, Any]) -> None:
        """Take back what ``save`` returned."""
