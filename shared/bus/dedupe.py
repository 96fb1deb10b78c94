"""Consumer-side deduplication by message id, for logs that may hold a message twice."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator

from shared.bus.protocol import Logged

# As many ids as a busy minute of events: the window in which a retried publish
# could have written the same message twice.
DEFAULT_WINDOW = 100_000


class RecentIds:
    """The ids handled most recently: at least the last ``window``, oldest forgotten first.

    Kept as integers in two plain dicts, the current window and the one before it, so
    the garbage collector never looks at them: a dict of ints is not tracked, whereas a
    window of ``uuid.UUID`` objects makes every full collection walk ``window`` more
    objects (about 25 ms per 100,000, with the event loop stopped meanwhile).
    """

    __slots__ = ("_current", "_previous", "_window")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._window = window
        self._current: dict[int, None] = {}
        self._previous: dict[int, None] = {}

    def __contains__(self, msg_id: uuid.UUID) -> bool:
        key = msg_id.int
        return key in self._current or key in self._previous

    def add(self, msg_id: uuid.UUID) -> None:
        self._current[msg_id.int] = None
        if len(self._current) >= self._window:
            self._previous, self._current = self._current, {}


async def unique(entries: AsyncIterable[Logged]) -> AsyncIterator[Logged]:
    """Entries of a log read, each message id once (undecodable entries all pass)."""
    seen = RecentIds()
    async for entry in entries:
        if entry.envelope is not None:
            if entry.envelope.id in seen:
                continue
            seen.add(entry.envelope.id)
        yield entry
