"""The stack's emulated time between two of the hosts' ticks.

The hosts' telemetry moves the stack's clock a tick at a time; a round of a migration
often lasts less than a tick. Between two samples emulated time passes at the stack's
speed, never past the next tick's time, so a round ends when its emulated duration has
passed, not at the next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pace:
    def __init__(
        self, speed: float, tick_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._speed = speed
        self._tick_s = tick_s
        self._monotonic = monotonic
        self._anchor = 0.0
        self._at = monotonic()

    def sample(self, sim_time: float) -> None:
        """A tick's sample arrived: its time is the stack's, now."""
        if sim_time > self._anchor:
            self._anchor, self._at = sim_time, self._monotonic()

    def now(self, seen: float) -> float:
        """The emulated time now, given the latest time ``seen`` in the log."""
        passed = (self._monotonic() - self._at) * self._speed
        return max(seen, self._anchor + min(passed, self._tick_s))
