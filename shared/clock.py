"""The stack's emulated time, as one service knows it.

Emulated time comes from the hosts' ticks; every other service takes it from what it
reads: the latest ``sim_time`` it has seen in the log (while rebuilding and following)
and in telemetry. So it never goes back, a restarted service continues it from the log
instead of starting at 0, and every message a service writes is stamped no earlier than
anything that service has seen (the runtime feeds the clock and stamps with it).
"""

from __future__ import annotations


class StackClock:
    """The latest emulated time seen; ``now`` never decreases."""

    __slots__ = ("_now",)

    def __init__(self) -> None:
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def saw(self, sim_time: float) -> None:
        self._now = max(self._now, sim_time)

    def unsee(self, earlier: float) -> None:
        """Back to ``earlier``, what it was before a sample turned out to be bad input:
        its time moves nothing. Only while nothing was stamped since (the runtime holds
        the decision lock throughout)."""
        self._now = min(self._now, earlier)
